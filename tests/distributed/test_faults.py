"""Faults during a job: pool processes and whole workers killed, a poison batch, an S3 outage.

Batches are held in the middle of their reads with a named pipe (FIFO) among the images:
a worker that opens it blocks until the test writes an image into it. The test can then
kill the process while a known batch is running.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from distributed.jobcheck import image_attempts, job_id_from_output, job_outcome, wait_for_job, wait_until
from services import S3Server, run_cli

STUCK_NAME = "zz-stuck.jpg"


def folder_with_fifo(tmp_path: Path, full_resolution_folder: Path, good_images: int) -> tuple[Path, Path, bytes]:
    """Copy `good_images` JPEGs into a new folder and add a FIFO named like an image; return both and JPEG bytes."""
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted(full_resolution_folder.iterdir())[:good_images + 1]
    for source in sources[:good_images]:
        shutil.copyfile(source.resolve(), folder / source.name)
    fifo = folder / STUCK_NAME
    os.mkfifo(fifo)
    return folder, fifo, sources[good_images].resolve().read_bytes()


def feed_fifo(fifo: Path, data: bytes) -> threading.Thread:
    """Write `data` into the FIFO from a thread; the write starts when a reader opens it."""

    def write() -> None:
        with open(fifo, "wb") as stream:
            stream.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def release_fifo_writer(fifo: Path) -> None:
    """Open the FIFO for reading without blocking, so that a writer thread still waiting can finish."""
    descriptor = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    time.sleep(0.2)
    os.close(descriptor)


def kill_pool_processes(worker) -> list[int]:
    pids = worker.pool_pids()
    assert pids, f"worker {worker.pid} has no pool process:\n{worker.log()[-3000:]}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_pool_process_killed_mid_batch(distributed_env, full_resolution_folder, worker_factory, tmp_path):
    folder, fifo, stuck_bytes = folder_with_fifo(tmp_path, full_resolution_folder, good_images=5)
    database_url = distributed_env["DERMBATCH_DATABASE_URL"]
    worker = worker_factory.start(distributed_env, concurrency=1)
    submitted = run_cli(["submit", str(folder), "--batch-size", "8"], distributed_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)

    wait_until(lambda: image_attempts(database_url, job_id, STUCK_NAME) == 1, 180, "the batch is claimed")
    time.sleep(0.5)
    kill_pool_processes(worker)
    wait_until(lambda: image_attempts(database_url, job_id, STUCK_NAME) == 2, 180,
               "the batch is delivered again")
    writer = feed_fifo(fifo, stuck_bytes)
    outcome = wait_for_job(database_url, job_id, timeout_s=180, workers=[worker])
    writer.join(timeout=10)

    assert outcome.status == "done"
    assert outcome.images == 6
    assert outcome.done == 6, outcome.error_messages
    assert outcome.distinct_predictions == 6
    assert outcome.prediction_rows == 6
    assert "SIGKILL" in worker.log()


def test_poison_batch_ends_as_errors(distributed_env, full_resolution_folder, worker_factory, tmp_path):
    folder, fifo, _ = folder_with_fifo(tmp_path, full_resolution_folder, good_images=1)
    env = {**distributed_env, "DERMBATCH_TASK_MAX_ATTEMPTS": "2"}
    database_url = env["DERMBATCH_DATABASE_URL"]
    worker = worker_factory.start(env, concurrency=1)
    submitted = run_cli(["submit", str(folder)], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)

    # The FIFO is never written, so every delivery blocks until its process is killed.
    for delivery in (1, 2):
        wait_until(lambda: image_attempts(database_url, job_id, STUCK_NAME) == delivery, 180,
                   f"delivery {delivery} claims the batch")
        time.sleep(0.5)
        kill_pool_processes(worker)
    outcome = wait_for_job(database_url, job_id, timeout_s=180, workers=[worker])

    assert outcome.status == "done"
    assert outcome.errors == 2
    assert outcome.error_reasons == {"batch_failed": 2}
    assert all("died 2 times" in message for message in outcome.error_messages), outcome.error_messages


@pytest.fixture()
def outage_server(tmp_path, full_resolution_folder):
    """A private S3 server holding 10 images under outage/, which a test may stop and start again."""
    server = S3Server(data_dir=tmp_path / "outage-s3")
    server.start()
    try:
        server.bucket = server.create_bucket()
        images = [path.resolve() for path in sorted(full_resolution_folder.iterdir())[:10]]
        server.upload_files(server.bucket, "outage/", images)
        yield server
    finally:
        server.stop()


def test_s3_outage_during_batch(distributed_env, outage_server, worker_factory):
    # One read retry, so that reads give up quickly and the task-level retry runs too. Eight
    # attempts 1, 2, 4 ... 64 s apart leave over two minutes for the server to come back.
    env = {**distributed_env, **outage_server.env(), "DERMBATCH_READ_RETRIES": "1",
           "DERMBATCH_RETRY_BACKOFF_S": "1", "DERMBATCH_TASK_MAX_ATTEMPTS": "8"}
    submitted = run_cli(["submit", f"s3://{outage_server.bucket}/outage/", "--batch-size", "5"], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)

    outage_server.stop()
    worker = worker_factory.start(env, concurrency=1)
    wait_until(lambda: "attempt 1 of 8 failed" in worker.log(), 180, "a batch attempt fails and is retried")
    outage_server.start()
    outcome = wait_for_job(env["DERMBATCH_DATABASE_URL"], job_id, timeout_s=300, workers=[worker])

    assert outcome.status == "done"
    assert outcome.done == 10, outcome.error_messages + [worker.log()[-3000:]]
    assert outcome.errors == 0
    assert outcome.prediction_rows == 10
    assert "retry 1 of 1" in worker.log()


def test_s3_down_for_good_ends_as_errors(distributed_env, outage_server, worker_factory):
    env = {**distributed_env, **outage_server.env(), "DERMBATCH_READ_RETRIES": "0",
           "DERMBATCH_RETRY_BACKOFF_S": "0.2", "DERMBATCH_TASK_MAX_ATTEMPTS": "2"}
    submitted = run_cli(["submit", f"s3://{outage_server.bucket}/outage/"], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)

    outage_server.stop()
    worker = worker_factory.start(env, concurrency=1)
    outcome = wait_for_job(env["DERMBATCH_DATABASE_URL"], job_id, timeout_s=300, workers=[worker])

    assert outcome.status == "done"
    assert outcome.errors == 10
    assert outcome.error_reasons == {"read_failed": 10}
    assert "attempt 1 of 2 failed" in worker.log()


@pytest.mark.slow
def test_worker_killed_and_restarted(distributed_env, s3_server, full_resolution_folder, worker_factory):
    # Messages of a worker killed outright wait in Redis until the visibility timeout (minimum 60 s) ends.
    env = {**distributed_env, "DERMBATCH_VISIBILITY_TIMEOUT_S": "60"}
    database_url = env["DERMBATCH_DATABASE_URL"]
    bucket = s3_server.create_bucket()
    s3_server.upload_files(bucket, "crash/", [path.resolve() for path in sorted(full_resolution_folder.iterdir())])
    first = worker_factory.start(env, concurrency=2)
    submitted = run_cli(["submit", f"s3://{bucket}/crash/", "--batch-size", "8"], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)

    wait_until(lambda: job_outcome(database_url, job_id).done >= 40, 300, "40 images are classified")
    first.kill()
    at_kill = job_outcome(database_url, job_id)
    second = worker_factory.start(env, concurrency=2)
    outcome = wait_for_job(database_url, job_id, timeout_s=400, workers=[first, second])

    assert at_kill.pending > 0
    assert outcome.status == "done"
    assert outcome.images == 245
    assert outcome.done == 245, outcome.error_messages[:3]
    assert outcome.distinct_predictions == 245
    assert outcome.prediction_rows == 245
