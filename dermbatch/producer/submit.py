"""Submitting a job to the workers: list the source, record images chunk by chunk, publish their batches.

Memory stays constant however large the source: each chunk of listed images is inserted
and committed, then its batches are published, before the next chunk is listed. Workers
may finish batches while listing goes on, so the job stays `created` until every batch
is published. Only then does it become `running` with its total, and only a running job
can become `done`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.registry import resolve_model_version
from dermbatch.errors import DermbatchError
from dermbatch.logredact import redact
from dermbatch.producer.jobs import chunked, list_images_or_raise, prefetch, source_uri, split_batches
from dermbatch.settings import Settings
from dermbatch.worker.celery_app import CLASSIFY_TASK, INFERENCE_QUEUE

logger = logging.getLogger(__name__)

#: Images listed, inserted and published per step; rounded down to whole batches.
SUBMIT_CHUNK = 1024
#: Mode stored with jobs run by Celery workers.
DISTRIBUTED_MODE = "distributed"


#: Connection attempts to the broker before `submit_job` records anything.
BROKER_CHECK_RETRIES = 2


class BrokerUnavailableError(DermbatchError):
    """The Celery broker cannot be reached, so batches cannot be queued."""


@dataclass(frozen=True)
class SubmittedJob:
    """A job whose batches are all published."""

    job_id: int
    model_version: str
    total_images: int
    #: Images linked at submission to an existing prediction of the same object version (same ETag).
    already_classified: int
    batches: int
    #: Whether the job was already done when submission ended (nothing left to classify).
    done: bool


def submit_job(
    source: str, settings: Settings, *, app: Celery | None = None, force: bool = False,
    model_version: str | None = None, batch_size: int | None = None,
) -> SubmittedJob:
    """Record a job for a folder or s3:// prefix and publish its batches on the inference queue.

    Unless `force` is set, images whose URI and listed ETag match a prediction of the job's
    model version are linked to it at once and not published. A listing or publishing
    failure after the job is recorded marks it failed and is raised again.
    """
    if app is None:
        from dermbatch.worker.celery_app import app
    batch_size = batch_size or settings.batch_size
    _check_broker(app, settings)
    images = list_images_or_raise(source, settings)

    with session_scope(settings.database_url) as session:
        version = resolve_model_version(session, settings, model_version)
        job = store.create_job(session, source_uri=source_uri(source), model_version_id=version.id,
                               batch_size=batch_size, force=force, mode=DISTRIBUTED_MODE)
        job_id, version_id, version_name = job.id, version.id, version.version
    logger.info("recorded job %d for %s, model %s", job_id, source, version_name)

    publisher = _BatchPublisher(app, job_id, version_id, version_name, force)
    try:
        total, linked = _record_and_publish(images, settings, job_id, version_id, force, batch_size, publisher)
        with session_scope(settings.database_url) as session:
            store.mark_job_running(session, job_id, total)
    except BrokerOperationalError as error:
        _mark_failed(settings, job_id, error)
        raise BrokerUnavailableError(
            f"queueing the batches of job {job_id} failed after {publisher.published} batches ({error}); "
            f"check that the broker at {redact(settings.broker_url)} is running, then submit again"
        ) from error
    except BaseException as error:
        _mark_failed(settings, job_id, error)
        raise

    # The last batch may have finished while the job was still `created`; finish it here then.
    with session_scope(settings.database_url) as session:
        done = store.finish_job_if_complete(session, job_id)
    logger.info("submitted job %d: %d images, %d already classified, %d batches", job_id, total, linked,
                publisher.published)
    return SubmittedJob(job_id=job_id, model_version=version_name, total_images=total, already_classified=linked,
                        batches=publisher.published, done=done)


def _check_broker(app: Celery, settings: Settings) -> None:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=BROKER_CHECK_RETRIES)
    except BrokerOperationalError as error:
        raise BrokerUnavailableError(
            f"cannot connect to the broker at {redact(settings.broker_url)} ({error}); "
            "check DERMBATCH_BROKER_URL and that Redis is running"
        ) from error


def _record_and_publish(
    images: Iterable[store.ImageRef], settings: Settings, job_id: int, version_id: int, force: bool,
    batch_size: int, publisher: _BatchPublisher,
) -> tuple[int, int]:
    # Whole batches per chunk, so that only the source's last batch is short.
    chunk_size = batch_size * max(1, math.floor(SUBMIT_CHUNK / batch_size))
    total = linked = 0
    for chunk in prefetch(chunked(images, chunk_size)):
        with session_scope(settings.database_url) as session:
            links = {} if force else _existing_predictions(session, version_id, chunk)
            pending_ids = store.add_images(session, job_id, chunk, links=links)
        total += len(chunk)
        linked += len(links)
        publisher.publish(split_batches(pending_ids, batch_size))
    return total, linked


def _existing_predictions(session, version_id: int, chunk: list[store.ImageRef]) -> dict[str, int]:
    keys = [(ref.uri, ref.content_hash) for ref in chunk if ref.content_hash]
    found = store.find_predictions(session, version_id, keys)
    return {uri: prediction_id for (uri, _), prediction_id in found.items()}


class _BatchPublisher:
    """Publishes a job's batches, numbering them for monitoring."""

    def __init__(self, app: Celery, job_id: int, version_id: int, version_name: str, force: bool) -> None:
        self.app = app
        self.job_id = job_id
        self.version_id = version_id
        self.version_name = version_name
        self.force = force
        self.published = 0

    def publish(self, batches: list[list[int]]) -> None:
        if not batches:
            return
        with self.app.producer_or_acquire() as producer:
            for image_ids in batches:
                self.published += 1
                # argsrepr is what Flower and `celery events` show in place of the id list.
                self.app.send_task(
                    CLASSIFY_TASK,
                    args=[self.job_id, image_ids, self.version_id, self.force],
                    queue=INFERENCE_QUEUE,
                    producer=producer,
                    argsrepr=(f"job={self.job_id} batch={self.published} images={len(image_ids)} "
                              f"model={self.version_name}"),
                )


def _mark_failed(settings: Settings, job_id: int, error: BaseException) -> None:
    message = f"submission failed: {type(error).__name__}: {error}"
    try:
        with session_scope(settings.database_url) as session:
            store.mark_job_failed(session, job_id, message)
    except Exception:
        logger.exception("could not mark job %d failed after: %s", job_id, message)
        return
    logger.error("job %d failed: %s", job_id, message)
