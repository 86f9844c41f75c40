"""Worker sizing: which device a worker uses, how many processes it runs, and their TensorFlow set-up.

`plan_worker` is a pure function of the settings, the core count and the GPU count, so
every case can be tested on a machine without a GPU. `count_gpus` finds the GPU count
without importing TensorFlow, because initialising CUDA in a worker's main process before
it forks its pool breaks CUDA in the children.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from dermbatch.errors import ConfigurationError
from dermbatch.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds to wait for `nvidia-smi --list-gpus` before counting no GPU.
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerPlan:
    """Sizing of one worker machine or container: device, processes and their TensorFlow settings."""

    #: Device TensorFlow runs on, "cpu" or "gpu" ("auto" is resolved before a plan is made).
    device: Literal["cpu", "gpu"]
    #: Worker processes (Celery pool size).
    processes: int
    #: TensorFlow intra-op threads per process.
    tf_threads: int
    #: Images per forward pass: DERMBATCH_BATCH_SIZE on CPU, DERMBATCH_GPU_BATCH_SIZE on GPU.
    #: NOTE: the worker only logs it so far, and its forward pass is as large as each message.
    batch_size: int
    #: Whether TensorFlow allocates GPU memory as needed instead of taking the whole card.
    memory_growth: bool
    #: CUDA_VISIBLE_DEVICES of each process by pool index; empty on CPU.
    visible_devices: tuple[str, ...] = ()
    #: DERMBATCH_DEVICE as set. With "auto", a GPU plan falls back to the CPU when TensorFlow
    #: finds no GPU, as a CPU-only TensorFlow build on a machine with GPUs does.
    requested_device: Literal["auto", "cpu", "gpu"] | None = None

    def process_environment(self, index: int) -> dict[str, str]:
        """Return the environment variables that pool process `index` sets before TensorFlow starts."""
        if self.device == "cpu":
            # An empty value hides every GPU, so a CPU worker never initialises CUDA.
            return {"CUDA_VISIBLE_DEVICES": ""}
        return {"CUDA_VISIBLE_DEVICES": self.visible_devices[index % len(self.visible_devices)]}

    def describe(self) -> str:
        """Return a one-line summary for the worker's start-up log."""
        text = (f"device={self.device} processes={self.processes} tf_threads={self.tf_threads} "
                f"batch_size={self.batch_size}")
        if self.device == "gpu":
            text += f" memory_growth={self.memory_growth} gpus={','.join(sorted(set(self.visible_devices)))}"
        return text


def plan_worker(
    settings: Settings, cpu_count: int, gpu_count: int, *, gpu_ids: Sequence[str] | None = None
) -> WorkerPlan:
    """Compute the worker plan for `settings.device` on a machine with these cores and GPUs.

    "auto" picks the GPU when at least one is present. "gpu" with no GPU raises
    ConfigurationError instead of falling back, so a misconfigured GPU host does not run
    quietly on its CPU. `gpu_ids` are the CUDA_VISIBLE_DEVICES entries to hand out, one
    per process; the default is 0 to gpu_count - 1.
    """
    if cpu_count < 1:
        raise ConfigurationError(f"invalid core count {cpu_count}; expected at least 1")
    if gpu_count < 0:
        raise ConfigurationError(f"invalid GPU count {gpu_count}; expected 0 or more")
    if gpu_ids is not None and len(gpu_ids) != gpu_count:
        raise ConfigurationError(f"{len(gpu_ids)} GPU ids {list(gpu_ids)} given for {gpu_count} GPUs")

    device = resolve_device(settings.device, gpu_count)
    if device == "gpu":
        ids = tuple(gpu_ids) if gpu_ids is not None else tuple(str(index) for index in range(gpu_count))
        return _plan_gpu(settings, cpu_count, ids)
    return _plan_cpu(settings, cpu_count)


def resolve_device(requested: str, gpu_count: int) -> Literal["cpu", "gpu"]:
    """Turn DERMBATCH_DEVICE (auto, cpu or gpu) into the device a worker uses."""
    if requested == "cpu":
        return "cpu"
    if requested == "gpu":
        if gpu_count == 0:
            raise ConfigurationError(
                "DERMBATCH_DEVICE=gpu but no GPU was found (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES "
                "hides them all); give the container a GPU or set DERMBATCH_DEVICE=cpu or auto"
            )
        return "gpu"
    if requested == "auto":
        return "gpu" if gpu_count > 0 else "cpu"
    raise ConfigurationError(f"invalid DERMBATCH_DEVICE {requested!r}; expected auto, cpu or gpu")


def _plan_cpu(settings: Settings, cpu_count: int) -> WorkerPlan:
    # Two processes with one intra-op thread each beat one process with two threads on
    # these small convolutional models, so the default is one single-threaded process per core.
    if settings.worker_concurrency is not None:
        processes = settings.worker_concurrency
        tf_threads = settings.tf_threads or max(1, cpu_count // processes)
    elif settings.tf_threads is not None:
        tf_threads = settings.tf_threads
        processes = max(1, cpu_count // tf_threads)
    else:
        processes, tf_threads = cpu_count, 1

    if processes * tf_threads > cpu_count:
        logger.warning("%d processes x %d TensorFlow threads exceed the %d cores; expect contention",
                       processes, tf_threads, cpu_count)
    return WorkerPlan(device="cpu", processes=processes, tf_threads=tf_threads,
                      batch_size=settings.batch_size, memory_growth=False, requested_device=settings.device)


def _plan_gpu(settings: Settings, cpu_count: int, gpu_ids: tuple[str, ...]) -> WorkerPlan:
    # One process per GPU, each seeing only its own card. DERMBATCH_WORKER_CONCURRENCY above
    # the GPU count puts several processes on a card, which memory growth makes possible.
    processes = settings.worker_concurrency or len(gpu_ids)
    tf_threads = settings.tf_threads or max(1, cpu_count // processes)
    visible_devices = tuple(gpu_ids[index % len(gpu_ids)] for index in range(processes))
    return WorkerPlan(device="gpu", processes=processes, tf_threads=tf_threads,
                      batch_size=settings.gpu_batch_size, memory_growth=True,
                      visible_devices=visible_devices, requested_device=settings.device)


def visible_gpu_ids(
    environ: Mapping[str, str] | None = None,
    list_gpus: Callable[[], list[str]] | None = None,
) -> list[str]:
    """Return the CUDA_VISIBLE_DEVICES entries of the GPUs this process may use, without initialising CUDA.

    The GPUs are those `nvidia-smi --list-gpus` prints ("0" to "n-1"), or the entries of
    CUDA_VISIBLE_DEVICES when that variable is set, at most as many as nvidia-smi lists.
    No nvidia-smi means no GPU.
    """
    environ = os.environ if environ is None else environ
    listed = (list_gpus or _list_gpus_with_nvidia_smi)()

    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(index) for index in range(len(listed))]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    # CUDA ignores the entries from the first invalid one on, and "-1" is the usual way to hide every GPU.
    usable = []
    for entry in entries:
        if entry.startswith("-"):
            break
        usable.append(entry)
    return usable[:len(listed)]


def count_gpus(environ: Mapping[str, str] | None = None,
               list_gpus: Callable[[], list[str]] | None = None) -> int:
    """Return how many GPUs `visible_gpu_ids` finds."""
    return len(visible_gpu_ids(environ, list_gpus))


def _list_gpus_with_nvidia_smi() -> list[str]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        completed = subprocess.run([executable, "--list-gpus"], capture_output=True, text=True,
                                   timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("nvidia-smi --list-gpus failed (%s); counting no GPU", error)
        return []
    if completed.returncode != 0:
        logger.warning("nvidia-smi --list-gpus exited with status %d: %s; counting no GPU",
                       completed.returncode, completed.stderr.strip()[:200])
        return []
    return [line for line in completed.stdout.splitlines() if line.startswith("GPU ")]


def apply_process_plan(plan: WorkerPlan, index: int) -> str:
    """Set up TensorFlow in pool process `index` following the plan; return the device in use.

    Call in each pool process before its first TensorFlow operation (Celery's
    `worker_process_init` signal), with `billiard.current_process().index` as the index.
    """
    from dermbatch.model.classifier import configure_tensorflow

    os.environ.update(plan.process_environment(index))
    device = "auto" if plan.requested_device == "auto" else plan.device
    in_use = configure_tensorflow(intra_op_threads=plan.tf_threads, device=device)
    if in_use != plan.device:
        logger.warning("nvidia-smi lists a GPU but TensorFlow finds none (a CPU-only TensorFlow build?); pool "
                       "process %d runs on the CPU with %d threads", index, plan.tf_threads)
    return in_use


def plan_for_this_machine(settings: Settings) -> WorkerPlan:
    """Plan a worker for the cores this process may run on and the GPUs nvidia-smi lists."""
    gpu_ids = visible_gpu_ids() if settings.device != "cpu" else []
    return plan_worker(settings, usable_cpu_count(), len(gpu_ids), gpu_ids=gpu_ids)


def usable_cpu_count() -> int:
    """Return the cores this process may run on (its CPU affinity, which a container's cpuset limits)."""
    # NOTE: a CPU quota (`docker run --cpus`, Compose `cpus:`) is not an affinity and is not
    # seen here; set DERMBATCH_WORKER_CONCURRENCY on containers limited that way.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
