"""The distributed pipeline end to end: S3 or a folder, Redis, real Celery workers, PostgreSQL or SQLite."""

from __future__ import annotations

from pathlib import Path

from distributed.jobcheck import job_id_from_output, job_outcome, wait_for_job
from services import free_port, run_cli

ODD_NAMES = ["with space.jpg", "plus+sign.jpg", "ümlaut é.jpg", "日本語.jpeg"]


def test_submit_s3_prefix_with_two_processes(distributed_env, s3_server, full_resolution_folder, worker_factory):
    bucket = s3_server.create_bucket()
    images = sorted(full_resolution_folder.iterdir())
    s3_server.upload_files(bucket, "ham10000/full/", [path.resolve() for path in images])
    worker = worker_factory.start(distributed_env, concurrency=2)

    completed = run_cli(["submit", f"s3://{bucket}/ham10000/full/", "--wait", "--timeout", "600",
                         "--batch-size", "16"], distributed_env)

    assert completed.returncode == 0, completed.stderr + worker.log()[-3000:]
    job_id = job_id_from_output(completed.stdout)
    outcome = job_outcome(distributed_env["DERMBATCH_DATABASE_URL"], job_id)
    assert outcome.status == "done"
    assert outcome.images == 245
    assert outcome.distinct_uris == 245
    assert outcome.done == 245, outcome.error_messages[:3]
    assert outcome.distinct_predictions == 245
    assert outcome.prediction_rows == 245
    assert "Traceback" not in worker.log()


def test_resubmission_skips_and_force_reclassifies(distributed_env, s3_server, full_resolution_folder,
                                                   worker_factory):
    bucket = s3_server.create_bucket()
    images = sorted(full_resolution_folder.iterdir())[:20]
    s3_server.upload_files(bucket, "again/", [path.resolve() for path in images])
    worker = worker_factory.start(distributed_env, concurrency=2)
    database_url = distributed_env["DERMBATCH_DATABASE_URL"]
    source = f"s3://{bucket}/again/"

    first = run_cli(["submit", source, "--wait", "--timeout", "300", "--batch-size", "8"], distributed_env)
    second = run_cli(["submit", source, "--wait", "--timeout", "300", "--batch-size", "8"], distributed_env)
    forced = run_cli(["submit", source, "--wait", "--timeout", "300", "--batch-size", "8", "--force"],
                     distributed_env)

    for completed in (first, second, forced):
        assert completed.returncode == 0, completed.stderr + worker.log()[-3000:]
    first_id, second_id, forced_id = (job_id_from_output(c.stdout) for c in (first, second, forced))
    assert "20 already classified, 0 batches queued" in second.stderr
    assert "0 already classified" in forced.stderr
    for job_id in (first_id, second_id, forced_id):
        outcome = job_outcome(database_url, job_id)
        assert outcome.status == "done"
        assert outcome.done == 20
        assert outcome.prediction_rows == 20
    assert f"job {second_id} batch" not in worker.log()
    assert f"job {forced_id} batch of 8 images: 8 predicted" in worker.log()


def test_submit_odd_key_names(distributed_env, s3_server, full_resolution_folder, worker_factory):
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    sample = sorted(full_resolution_folder.iterdir())[0].resolve().read_bytes()
    for name in ODD_NAMES:
        client.put_object(Bucket=bucket, Key=f"odd names/{name}", Body=sample)
    worker = worker_factory.start(distributed_env, concurrency=1)

    completed = run_cli(["submit", f"s3://{bucket}/odd names/", "--wait", "--timeout", "300"], distributed_env)

    assert completed.returncode == 0, completed.stderr + worker.log()[-3000:]
    outcome = job_outcome(distributed_env["DERMBATCH_DATABASE_URL"], job_id_from_output(completed.stdout))
    assert outcome.done == len(ODD_NAMES), outcome.error_messages


def test_sqlite_with_two_worker_processes(distributed_env, full_resolution_folder, worker_factory, tmp_path: Path):
    env = {**distributed_env, "DERMBATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    worker = worker_factory.start(env, concurrency=2)

    # Batches of 4 make about 60 transactions from two processes compete for SQLite's write lock.
    completed = run_cli(["submit", str(full_resolution_folder), "--wait", "--timeout", "600",
                         "--batch-size", "4"], env)

    assert completed.returncode == 0, completed.stderr + worker.log()[-3000:]
    outcome = job_outcome(env["DERMBATCH_DATABASE_URL"], job_id_from_output(completed.stdout))
    assert outcome.status == "done"
    assert outcome.done == 245
    assert outcome.prediction_rows == 245
    assert "database is locked" not in worker.log()
    assert worker.log().count("ForkPoolWorker-1") > 0
    assert worker.log().count("ForkPoolWorker-2") > 0


def test_submit_missing_bucket_is_one_line(distributed_env):
    completed = run_cli(["submit", "s3://no-such-bucket-for-dermbatch/prefix/"], distributed_env)

    assert completed.returncode == 2
    assert "not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_submit_empty_prefix_is_one_line(distributed_env, s3_server):
    bucket = s3_server.create_bucket()

    completed = run_cli(["submit", f"s3://{bucket}/empty/"], distributed_env)

    assert completed.returncode == 2
    assert "no JPEG or PNG images found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_submit_unreachable_broker_is_one_line(distributed_env, s3_server):
    env = {**distributed_env, "DERMBATCH_BROKER_URL": f"redis://:secret-password@127.0.0.1:{free_port()}/0"}

    completed = run_cli(["submit", "s3://any-bucket/prefix/"], env)

    assert completed.returncode == 2
    assert "cannot connect to the broker" in completed.stderr
    assert "secret-password" not in completed.stderr
    assert "Traceback" not in completed.stderr
