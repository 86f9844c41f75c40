"""The producer without workers: what it records and publishes, and the Celery settings it publishes with."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import redis

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import Job, ModelVersion
from dermbatch.producer.submit import submit_job
from dermbatch.settings import get_settings
from dermbatch.worker.celery_app import INFERENCE_QUEUE, create_app


def queued_messages(redis_url: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(INFERENCE_QUEUE, 0, -1)]
    finally:
        client.close()


def test_submit_publishes_chunks_of_batches(distributed_env, s3_server):
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    keys = [f"large/img-{index:05d}.jpg" for index in range(1100)]
    with ThreadPoolExecutor(max_workers=8) as executor:
        list(executor.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    settings = get_settings()
    upgrade_database(settings.database_url)

    job = submit_job(f"s3://{bucket}/large/", settings, app=create_app(settings), batch_size=32)

    messages = queued_messages(distributed_env["DERMBATCH_BROKER_URL"])
    assert job.total_images == 1100
    assert job.batches == 35
    assert job.done is False
    assert len(messages) == 35
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job.job_id)
        assert row.status == "running"
        assert row.total_images == 1100
        assert store.job_counts(session, job.job_id).pending == 1100
    published_ids = [image_id for message in messages for image_id in _arguments(message)[1]]
    assert len(published_ids) == 1100
    assert len(set(published_ids)) == 1100


def test_published_message_is_json_with_summary(distributed_env, full_resolution_folder, tmp_path):
    folder = tmp_path / "five"
    folder.mkdir()
    for source in sorted(full_resolution_folder.iterdir())[:5]:
        (folder / source.name).symlink_to(source.resolve())
    settings = get_settings()
    upgrade_database(settings.database_url)

    job = submit_job(str(folder), settings, app=create_app(settings), batch_size=2)

    messages = queued_messages(distributed_env["DERMBATCH_BROKER_URL"])
    assert len(messages) == 3
    first = messages[-1]  # kombu pushes on the left, so the first published message is last
    assert first["content-type"] == "application/json"
    assert first["headers"]["task"] == "dermbatch.classify_batch"
    assert first["headers"]["argsrepr"] == f"job={job.job_id} batch=1 images=2 model=tiny-test"
    job_id, image_ids, model_version_id, force = _arguments(first)
    assert job_id == job.job_id
    assert len(image_ids) == 2
    assert force is False
    with session_scope(settings.database_url) as session:
        assert session.get(ModelVersion, model_version_id).version == "tiny-test"


def test_created_job_is_not_finished(sqlite_url):
    upgrade_database(sqlite_url)
    with session_scope(sqlite_url) as session:
        version = ModelVersion(version="v-finish", path="/nowhere", sha256="0" * 64, contract={})
        session.add(version)
        session.flush()
        job = store.create_job(session, source_uri="/images", model_version_id=version.id, batch_size=2,
                               force=False, mode="distributed")
        ids = store.add_images(session, job.id, [store.ImageRef(uri="/images/a.jpg")])
        store.record_outcomes(session, model_version_id=version.id, predictions=[], errors=[
            store.ErrorOutcome(image_id=ids[0], reason="read_failed", message="test")])
        job_id = job.id

    with session_scope(sqlite_url) as session:
        finished_while_created = store.finish_job_if_complete(session, job_id)
        store.mark_job_running(session, job_id, 1)
    with session_scope(sqlite_url) as session:
        finished_when_running = store.finish_job_if_complete(session, job_id)

    assert finished_while_created is False
    assert finished_when_running is True


def test_celery_app_delivery_settings():
    conf = create_app(get_settings()).conf

    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == get_settings().visibility_timeout_s
    assert conf.task_routes["dermbatch.classify_batch"] == {"queue": "inference"}
    assert conf.task_routes["dermbatch.retrain"] == {"queue": "training"}
    assert conf.beat_schedule["retrain"]["schedule"] == get_settings().retrain_interval_s
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True


def _arguments(message: dict) -> list:
    body = json.loads(base64.b64decode(message["body"]))
    return body[0]
