"""A pool process killed by the kernel for using too much memory does not requeue its batch forever.

The worker runs in a memory cgroup (cgroup v1) whose limit lets it classify ordinary images
but not decode a 16,000 x 16,000 PNG, so the kernel's OOM killer ends the pool process on
every delivery of that image's batch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from PIL import Image

from distributed.jobcheck import job_id_from_output, wait_for_job
from services import DERMBATCH, WorkerProcess, run_cli

pytestmark = pytest.mark.slow

MEMORY_CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
#: Enough for a worker with the tiny model, far below what decoding the huge PNG needs.
MEMORY_LIMIT_BYTES = 1536 * 1024 * 1024
HUGE_SIDE = 16_000


@pytest.fixture()
def memory_cgroup():
    if not os.access(MEMORY_CGROUP_ROOT, os.W_OK):
        pytest.skip(f"no writable cgroup v1 memory controller at {MEMORY_CGROUP_ROOT}")
    group = MEMORY_CGROUP_ROOT / f"dermbatch-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(MEMORY_LIMIT_BYTES))
    try:
        (group / "memory.swappiness").write_text("0")
    except OSError:
        pass
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (MEMORY_CGROUP_ROOT / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        group.rmdir()


def oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return 0


def start_worker_in_cgroup(env: dict[str, str], group: Path, log_dir: Path) -> WorkerProcess:
    """Start `dermbatch worker` inside the cgroup, so that its pool processes are charged from their start."""
    log_path = log_dir / "worker-in-cgroup.log"
    command = [DERMBATCH, "worker", "--concurrency", "1", "--queues", "inference", "--hostname",
               f"oom-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]

    def join_cgroup() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir,
                                   start_new_session=True, preexec_fn=join_cgroup)
    worker = WorkerProcess(process=process, log_path=log_path)
    worker.wait_until_ready()
    return worker


@pytest.fixture()
def stopped_after():
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.stop()


def test_oom_killed_batch_ends_as_errors(fault_env, memory_cgroup, postgres_url, redis_url, full_resolution_folder,
                                         stopped_after, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted(full_resolution_folder.iterdir())[:8]:
        shutil.copyfile(source.resolve(), folder / source.name)
    Image.new("L", (HUGE_SIDE, HUGE_SIDE), 128).save(folder / "zz-huge.png")
    env = {**fault_env, "DERMBATCH_DATABASE_URL": postgres_url, "DERMBATCH_BROKER_URL": redis_url,
           "DERMBATCH_TASK_MAX_ATTEMPTS": "2", "DERMBATCH_MAX_IMAGE_PIXELS": str(HUGE_SIDE * HUGE_SIDE + 1)}
    worker = start_worker_in_cgroup(env, memory_cgroup, tmp_path)
    stopped_after.append(worker)

    submitted = run_cli(["submit", str(folder), "--batch-size", "4"], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)
    outcome = wait_for_job(postgres_url, job_id, timeout_s=900, workers=[worker])

    assert oom_kills(memory_cgroup) >= 2, "the kernel must have killed the pool process on each delivery"
    assert outcome.status == "done"
    assert outcome.images == 9
    assert outcome.done == 8, outcome.error_messages
    assert outcome.error_reasons == {"batch_failed": 1}
    assert "died" in outcome.error_messages[0]
