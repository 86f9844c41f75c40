"""Faults during a distributed job: every image still ends exactly once as a prediction or an error.

Each test submits a job of 980 images (the 245 full-resolution HAM10000 images, four times
each under different names) in batches of 4, injects a fault once 40 images are done,
and waits for the job to finish.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from distributed.jobcheck import job_id_from_output, job_outcome, wait_for_job
from faults.conftest import PrivatePostgres, PrivateRedis, wait_for
from services import S3Server, run_cli

pytestmark = pytest.mark.slow

COPIES = 4
BATCH_SIZE = "4"
#: Images done before the fault is injected.
FAULT_AFTER_DONE = 40
JOB_TIMEOUT_S = 600


@pytest.fixture()
def repeated_folder(full_resolution_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "repeated"
    folder.mkdir()
    for copy in range(COPIES):
        for path in sorted(full_resolution_folder.iterdir()):
            (folder / f"copy{copy}-{path.name}").symlink_to(path.resolve())
    return folder


def done_count(database_url: str, job_id: int) -> int:
    try:
        outcome = job_outcome(database_url, job_id)
    except Exception:  # noqa: BLE001 - the database may be the thing that is down
        return 0
    return outcome.done + outcome.errors


def submit(env: dict[str, str], source: str) -> int:
    completed = run_cli(["submit", source, "--batch-size", BATCH_SIZE], env)
    assert completed.returncode == 0, completed.stderr
    return job_id_from_output(completed.stdout)


def assert_every_image_once(database_url: str, job_id: int, workers) -> None:
    outcome = wait_for_job(database_url, job_id, timeout_s=JOB_TIMEOUT_S, workers=workers)
    expected = 245 * COPIES
    assert outcome.status == "done"
    assert outcome.images == expected
    assert outcome.pending == 0
    assert outcome.done + outcome.errors == expected
    assert outcome.errors == 0, outcome.error_messages[:3]
    assert outcome.distinct_predictions == expected
    assert outcome.prediction_rows == expected, "a prediction was written twice"


def inject_mid_job(database_url: str, job_id: int, fault) -> None:
    wait_for(lambda: done_count(database_url, job_id) >= FAULT_AFTER_DONE, 300, f"{FAULT_AFTER_DONE} images are done")
    done_before = done_count(database_url, job_id)
    fault()
    assert done_before < 245 * COPIES, "the fault must land while the job is running"


def test_redis_restart_during_job(fault_env, private_redis: PrivateRedis, postgres_url, repeated_folder,
                                  worker_factory):
    env = {**fault_env, "DERMBATCH_DATABASE_URL": postgres_url, "DERMBATCH_BROKER_URL": private_redis.url}
    worker = worker_factory.start(env, concurrency=1)
    job_id = submit(env, str(repeated_folder))

    def restart_redis() -> None:
        private_redis.stop(signal.SIGKILL)
        time.sleep(3)
        private_redis.start()

    inject_mid_job(postgres_url, job_id, restart_redis)

    assert_every_image_once(postgres_url, job_id, [worker])


def test_postgres_restart_during_job(fault_env, private_postgres: PrivatePostgres, redis_url, repeated_folder,
                                     worker_factory):
    env = {**fault_env, "DERMBATCH_DATABASE_URL": private_postgres.url, "DERMBATCH_BROKER_URL": redis_url}
    run_cli(["db", "upgrade"], env)
    worker = worker_factory.start(env, concurrency=1)
    job_id = submit(env, str(repeated_folder))

    def restart_postgres() -> None:
        private_postgres.stop()
        time.sleep(3)
        private_postgres.start()

    inject_mid_job(private_postgres.url, job_id, restart_postgres)

    assert_every_image_once(private_postgres.url, job_id, [worker])


def test_s3_server_stopped_for_seconds(fault_env, postgres_url, redis_url, repeated_folder, worker_factory,
                                       tmp_path):
    server = S3Server(data_dir=tmp_path / "seaweedfs")
    server.start()
    try:
        bucket = server.create_bucket()
        paths = sorted(repeated_folder.iterdir())
        client = server.client()
        for path in paths:
            client.put_object(Bucket=bucket, Key=f"faults/{path.name}", Body=path.read_bytes())
        env = {**fault_env, **server.env(), "DERMBATCH_DATABASE_URL": postgres_url, "DERMBATCH_BROKER_URL": redis_url}
        worker = worker_factory.start(env, concurrency=1)
        job_id = submit(env, f"s3://{bucket}/faults/")

        def pause_s3() -> None:
            server.stop()
            time.sleep(5)
            server.start()

        inject_mid_job(postgres_url, job_id, pause_s3)

        assert_every_image_once(postgres_url, job_id, [worker])
    finally:
        server.stop()
