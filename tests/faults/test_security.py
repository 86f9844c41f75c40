"""Security: JSON-only messages, no secrets in logs, results filters that cannot inject SQL."""

from __future__ import annotations

import pickle
import uuid

import pytest
from kombu import Connection, Exchange, Producer

from distributed.jobcheck import job_id_from_output, job_outcome, wait_for_job, wait_until
from faults.conftest import PrivateRedis
from services import free_port, run_cli

S3_SECRET_MARK = "dermbatch-test-secret"


@pytest.fixture()
def password_redis(tmp_path):
    server = PrivateRedis(folder=tmp_path, port=free_port(), password=f"pw-{uuid.uuid4().hex}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_pickle_message_is_rejected(fault_env, password_redis, postgres_url, full_resolution_folder, worker_factory,
                                    tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted(full_resolution_folder.iterdir())[:2]:
        (folder / source.name).symlink_to(source.resolve())
    env = {**fault_env, "DERMBATCH_DATABASE_URL": postgres_url, "DERMBATCH_BROKER_URL": password_redis.url}
    run_cli(["db", "upgrade"], env)
    submitted = run_cli(["submit", str(folder)], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = job_id_from_output(submitted.stdout)
    with Connection(password_redis.url) as connection:
        connection.default_channel.client.delete("inference")
        body = pickle.dumps(([job_id, [1, 2], 1, False], {}, {}))
        producer = Producer(connection)
        producer.publish(body, exchange=Exchange("inference", type="direct"), routing_key="inference",
                         serializer=None, content_type="application/x-python-serialize", content_encoding="binary",
                         headers={"task": "dermbatch.classify_batch", "id": str(uuid.uuid4()), "lang": "py"},
                         declare=[Exchange("inference", type="direct")])

    worker = worker_factory.start(env, concurrency=1)
    wait_until(lambda: "pickle" in worker.log(), 120, "the worker reports the pickle message")

    outcome = job_outcome(postgres_url, job_id)
    assert outcome.pending == 2, "a pickled task must never run"
    assert "untrusted content" in worker.log() or "ContentDisallowed" in worker.log()


@pytest.mark.slow
def test_logs_contain_no_secrets(fault_env, password_redis, postgres_url, s3_server, full_resolution_folder,
                                 worker_factory):
    bucket = s3_server.create_bucket()
    s3_server.upload_files(bucket, "secret-check/", [p.resolve() for p in sorted(full_resolution_folder.iterdir())[:4]])
    env = {**fault_env, **s3_server.env(), "DERMBATCH_DATABASE_URL": postgres_url,
           "DERMBATCH_BROKER_URL": password_redis.url, "DERMBATCH_LOG_LEVEL": "DEBUG"}
    worker = worker_factory.start(env, concurrency=1)

    completed = run_cli(["--verbose", "submit", f"s3://{bucket}/secret-check/", "--wait", "--timeout", "300"], env)

    assert completed.returncode == 0, completed.stderr
    outcome = wait_for_job(postgres_url, job_id_from_output(completed.stdout), workers=[worker])
    assert outcome.done == 4
    for name, text in (("worker log", worker.log()), ("submit output", completed.stdout + completed.stderr)):
        assert password_redis.password not in text, f"the Redis password appears in the {name}"
        assert S3_SECRET_MARK not in text, f"the S3 secret key appears in the {name}"
        assert "X-Amz-Signature=" not in text or "X-Amz-Signature=***" in text, name


HOSTILE_LABELS = ["mel' OR '1'='1", "mel; DROP TABLE predictions; --", "mel\") OR 1=1 --", "%", "mel%"]


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_results_filters_treat_input_as_data(sqlite_url, label):
    from core.test_store import make_job, outcome as make_outcome
    from dermbatch.db import store
    from dermbatch.db.engine import session_scope
    from dermbatch.db.queries import ProbabilityFilter, get_job, iter_results

    job_id, ids, version_id = make_job(sqlite_url, ["/images/a.jpg", "/images/b.jpg"])
    with session_scope(sqlite_url) as session:
        store.record_outcomes(session, model_version_id=version_id, errors=[],
                              predictions=[make_outcome(ids[0], "/images/a.jpg", 0.9),
                                           make_outcome(ids[1], "/images/b.jpg", 0.1)])

    with session_scope(sqlite_url) as session:
        job = get_job(session, job_id)
        by_label = list(iter_results(session, job, label=label))
        by_probability = list(iter_results(session, job, probability_filters=[ProbabilityFilter(label, 0.0)]))
        everything = list(iter_results(session, job))

    assert by_label == []
    assert by_probability == []
    assert len(everything) == 2, "the tables must be intact"
