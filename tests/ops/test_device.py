"""Worker plans for CPU and GPU machines; the GPU cases are configuration only, no GPU runs here."""

from __future__ import annotations

import os

import pytest

from dermbatch.errors import ConfigurationError
from dermbatch.settings import Settings
from dermbatch.worker.device import WorkerPlan, apply_process_plan, count_gpus, plan_worker, visible_gpu_ids


def make_settings(**values) -> Settings:
    # Explicit values so that DERMBATCH_* variables of the test environment do not leak in.
    defaults = {"device": "auto", "tf_threads": None, "worker_concurrency": None,
                "batch_size": 32, "gpu_batch_size": 128}
    return Settings(**{**defaults, **values})


PLAN_CASES = [
    # (id, settings, cores, gpus, device, processes, tf_threads, batch_size, visible_devices)
    ("cpu-2-cores", {"device": "cpu"}, 2, 0, "cpu", 2, 1, 32, ()),
    ("cpu-16-cores", {"device": "cpu"}, 16, 0, "cpu", 16, 1, 32, ()),
    ("cpu-ignores-gpus", {"device": "cpu"}, 16, 4, "cpu", 16, 1, 32, ()),
    ("cpu-16-cores-4-threads", {"device": "cpu", "tf_threads": 4}, 16, 0, "cpu", 4, 4, 32, ()),
    ("cpu-16-cores-4-processes", {"device": "cpu", "worker_concurrency": 4}, 16, 0, "cpu", 4, 4, 32, ()),
    ("cpu-threads-above-cores", {"device": "cpu", "tf_threads": 8}, 2, 0, "cpu", 1, 8, 32, ()),
    ("gpu-1-gpu", {"device": "gpu"}, 8, 1, "gpu", 1, 8, 128, ("0",)),
    ("gpu-4-gpus", {"device": "gpu"}, 16, 4, "gpu", 4, 4, 128, ("0", "1", "2", "3")),
    ("gpu-2-processes-per-gpu", {"device": "gpu", "worker_concurrency": 4}, 16, 2, "gpu", 4, 4, 128,
     ("0", "1", "0", "1")),
    ("gpu-batch-size-setting", {"device": "gpu", "gpu_batch_size": 512}, 4, 1, "gpu", 1, 4, 512, ("0",)),
    ("auto-with-2-gpus", {"device": "auto"}, 16, 2, "gpu", 2, 8, 128, ("0", "1")),
    ("auto-without-gpus", {"device": "auto"}, 16, 0, "cpu", 16, 1, 32, ()),
]


@pytest.mark.parametrize(
    "settings_values,cores,gpus,device,processes,tf_threads,batch_size,visible_devices",
    [case[1:] for case in PLAN_CASES],
    ids=[case[0] for case in PLAN_CASES],
)
def test_plan_worker_cases(settings_values, cores, gpus, device, processes, tf_threads, batch_size,
                           visible_devices):
    plan = plan_worker(make_settings(**settings_values), cores, gpus)

    assert plan.device == device
    assert plan.processes == processes
    assert plan.tf_threads == tf_threads
    assert plan.batch_size == batch_size
    assert plan.visible_devices == visible_devices
    assert plan.memory_growth is (device == "gpu")


@pytest.mark.parametrize("cores", [1, 2, 3, 16, 64])
def test_cpu_plan_fills_cores_exactly(cores):
    plan = plan_worker(make_settings(device="cpu"), cores, 0)

    assert plan.processes * plan.tf_threads == cores


def test_gpu_requested_without_gpu_raises():
    with pytest.raises(ConfigurationError, match="DERMBATCH_DEVICE=gpu but no GPU was found"):
        plan_worker(make_settings(device="gpu"), 16, 0)


@pytest.mark.parametrize("cores,gpus", [(0, 0), (4, -1)])
def test_plan_rejects_invalid_counts(cores, gpus):
    with pytest.raises(ConfigurationError, match="invalid"):
        plan_worker(make_settings(device="auto"), cores, gpus)


def test_gpu_ids_are_handed_out_per_process():
    plan = plan_worker(make_settings(device="gpu"), 8, 2, gpu_ids=["2", "5"])

    assert plan.visible_devices == ("2", "5")
    assert plan.process_environment(0) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert plan.process_environment(1) == {"CUDA_VISIBLE_DEVICES": "5"}


def test_gpu_ids_must_match_gpu_count():
    with pytest.raises(ConfigurationError, match="GPU ids"):
        plan_worker(make_settings(device="gpu"), 8, 2, gpu_ids=["0"])


def test_cpu_process_environment_hides_gpus():
    plan = plan_worker(make_settings(device="cpu"), 2, 1)

    assert plan.process_environment(0) == {"CUDA_VISIBLE_DEVICES": ""}
    assert plan.process_environment(1) == {"CUDA_VISIBLE_DEVICES": ""}


def test_describe_names_device_and_batch_size():
    gpu_plan = WorkerPlan(device="gpu", processes=2, tf_threads=4, batch_size=128, memory_growth=True,
                          visible_devices=("0", "1"))

    assert gpu_plan.describe() == (
        "device=gpu processes=2 tf_threads=4 batch_size=128 memory_growth=True gpus=0,1"
    )


NVIDIA_SMI_TWO_GPUS = [
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)",
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-1111-1111-1111-111111111111)",
]

VISIBLE_CASES = [
    # (id, CUDA_VISIBLE_DEVICES or None, nvidia-smi lines, expected ids)
    ("no-nvidia-smi", None, [], []),
    ("all-listed", None, NVIDIA_SMI_TWO_GPUS, ["0", "1"]),
    ("one-visible", "1", NVIDIA_SMI_TWO_GPUS, ["1"]),
    ("empty-hides-all", "", NVIDIA_SMI_TWO_GPUS, []),
    ("minus-one-hides-all", "-1", NVIDIA_SMI_TWO_GPUS, []),
    ("stops-at-invalid-entry", "0,-1,1", NVIDIA_SMI_TWO_GPUS, ["0"]),
    ("uuid-entries", "GPU-11111111", NVIDIA_SMI_TWO_GPUS, ["GPU-11111111"]),
    ("more-entries-than-gpus", "0,1,2,3", NVIDIA_SMI_TWO_GPUS, ["0", "1"]),
]


@pytest.mark.parametrize("visible,listed,expected", [case[1:] for case in VISIBLE_CASES],
                         ids=[case[0] for case in VISIBLE_CASES])
def test_visible_gpu_ids_cases(visible, listed, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}

    assert visible_gpu_ids(environ, lambda: listed) == expected
    assert count_gpus(environ, lambda: listed) == len(expected)


@pytest.mark.parametrize("requested,cores,gpus", [("auto", 8, 1), ("gpu", 8, 1), ("cpu", 8, 0), ("auto", 8, 0)])
def test_plan_records_requested_device(requested, cores, gpus):
    plan = plan_worker(make_settings(device=requested), cores, gpus)

    assert plan.requested_device == requested


def test_apply_process_plan_auto_falls_back_to_cpu(monkeypatch):
    # TensorFlow here is a CPU-only build, like a machine whose nvidia-smi lists a GPU
    # that TensorFlow cannot use.
    import dermbatch.model.classifier as classifier

    calls = []
    monkeypatch.setattr(classifier, "configure_tensorflow",
                        lambda intra_op_threads, device: calls.append((intra_op_threads, device)) or "cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    plan = plan_worker(make_settings(device="auto"), 8, 1)

    device = apply_process_plan(plan, 0)

    assert device == "cpu"
    assert calls == [(8, "auto")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_apply_process_plan_gpu_stays_strict(monkeypatch):
    import dermbatch.model.classifier as classifier

    calls = []
    monkeypatch.setattr(classifier, "configure_tensorflow",
                        lambda intra_op_threads, device: calls.append(device) or device)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    apply_process_plan(plan_worker(make_settings(device="gpu"), 8, 2), 1)

    assert calls == ["gpu"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
