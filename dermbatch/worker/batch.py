"""The batch function: read, decode, one forward pass, one transaction of results.

`dermbatch classify` calls it in-process and the Celery task calls it in a worker. Both get
the same exactly-once behaviour, because every write is idempotent and only pending images
are changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.errors import ImageReadError, InvalidImageError
from dermbatch.model.classifier import Classifier
from dermbatch.model.preprocess import decode_image, scale_pixels
from dermbatch.settings import Settings
from dermbatch.sources.reader import read_image

logger = logging.getLogger(__name__)

#: Reason code of an image whose bytes could not be read.
READ_FAILED = "read_failed"
#: Reason code of an image whose batch was delivered too many times without finishing.
BATCH_FAILED = "batch_failed"


class TransientBatchError(Exception):
    """Some reads of a batch failed in a way that a later retry of the batch may fix."""


@dataclass
class BatchResult:
    """Counts and timing of one call of `classify_batch`."""

    job_id: int
    claimed: int = 0
    predicted: int = 0
    reused: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    job_done: bool = False

    @property
    def images_per_second(self) -> float:
        return self.claimed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Loaded:
    image: store.PendingImage
    content_hash: str | None = None
    size_bytes: int | None = None
    #: Model input of one image: decoded, fitted and scaled as the contract states (float32).
    pixels: np.ndarray | None = None
    error: store.ErrorOutcome | None = None
    transient: bool = False


@dataclass
class LoadedBatch:
    """A batch whose pending images are read and decoded, ready for its forward pass."""

    job_id: int
    items: list[_Loaded]
    started: float
    force: bool
    final_attempt: bool


def classify_batch(
    job_id: int,
    image_ids: Sequence[int],
    *,
    classifier: Classifier,
    model_version_id: int,
    settings: Settings,
    executor: ThreadPoolExecutor,
    force: bool = False,
    final_attempt: bool = True,
) -> BatchResult:
    """Classify a batch of a job's images and record a prediction or an error for each.

    Images already finished are skipped. When a read fails transiently and this is not
    the final attempt, TransientBatchError is raised after the rest of the batch is
    recorded, so that a retry handles only the images left pending.
    """
    loaded = load_batch(job_id, image_ids, classifier=classifier, settings=settings, executor=executor,
                        force=force, final_attempt=final_attempt)
    return complete_batch(loaded, classifier=classifier, model_version_id=model_version_id, settings=settings)


def load_batch(
    job_id: int,
    image_ids: Sequence[int],
    *,
    classifier: Classifier,
    settings: Settings,
    executor: ThreadPoolExecutor,
    force: bool = False,
    final_attempt: bool = True,
) -> LoadedBatch:
    """Claim a batch's pending images, then read and decode them on the executor's threads."""
    started = time.perf_counter()
    with session_scope(settings.database_url) as session:
        pending = store.claim_pending(session, job_id, image_ids)
    items = list(executor.map(lambda image: _load(image, classifier, settings), pending))
    return LoadedBatch(job_id=job_id, items=items, started=started, force=force, final_attempt=final_attempt)


def complete_batch(
    batch: LoadedBatch, *, classifier: Classifier, model_version_id: int, settings: Settings
) -> BatchResult:
    """Run the forward pass of a loaded batch and write its predictions and errors in one transaction."""
    job_id = batch.job_id
    result = BatchResult(job_id=job_id, claimed=len(batch.items))
    if not batch.items:
        result.job_done = _finish_job(job_id, settings)
        return result

    retry_later = [item for item in batch.items if item.transient and not batch.final_attempt]
    ready = [item for item in batch.items if item.pixels is not None]
    errors = [item.error for item in batch.items
              if item.error is not None and not (item.transient and not batch.final_attempt)]

    reused = _reusable_predictions(ready, model_version_id, settings) if not batch.force else {}
    to_predict = [item for item in ready if item.image.id not in reused]
    predictions = _predict(to_predict, classifier)

    with session_scope(settings.database_url) as session:
        store.record_outcomes(session, model_version_id=model_version_id, predictions=predictions,
                              errors=errors, reused=reused, replace=batch.force)
    result.job_done = _finish_job(job_id, settings)

    result.predicted, result.reused, result.errors = len(predictions), len(reused), len(errors)
    for error in errors:
        result.error_reasons[error.reason] = result.error_reasons.get(error.reason, 0) + 1
    result.seconds = time.perf_counter() - batch.started

    if retry_later:
        raise TransientBatchError(
            f"{len(retry_later)} of {len(batch.items)} images of job {job_id} could not be read: "
            f"{retry_later[0].error.message}"
        )
    return result


def record_batch_failure(job_id: int, image_ids: Sequence[int], message: str, settings: Settings) -> int:
    """Record every still-pending image of a batch as an error; return how many were recorded."""
    with session_scope(settings.database_url) as session:
        pending = store.claim_pending(session, job_id, image_ids)
        errors = [store.ErrorOutcome(image_id=image.id, reason=BATCH_FAILED, message=message) for image in pending]
        store.record_outcomes(session, model_version_id=0, predictions=[], errors=errors)
    _finish_job(job_id, settings)
    return len(errors)


def _load(image: store.PendingImage, classifier: Classifier, settings: Settings) -> _Loaded:
    item = _Loaded(image=image)
    try:
        data, item.content_hash = read_image(image.uri, settings)
    except ImageReadError as error:
        item.error = store.ErrorOutcome(image_id=image.id, reason=READ_FAILED, message=str(error))
        item.transient = error.transient
        return item

    item.size_bytes = len(data)
    if len(data) > settings.max_image_bytes:
        message = (f"file is {len(data)} bytes, above the limit of {settings.max_image_bytes} "
                   "(DERMBATCH_MAX_IMAGE_BYTES)")
        item.error = _error(item, "file_too_large", message)
        return item
    try:
        pixels = decode_image(data, classifier.contract, max_pixels=settings.max_image_pixels)
        item.pixels = scale_pixels(pixels, classifier.contract.pixel_scaling)
    except InvalidImageError as error:
        item.error = _error(item, error.reason, error.message)
    return item


def _error(item: _Loaded, reason: str, message: str) -> store.ErrorOutcome:
    return store.ErrorOutcome(image_id=item.image.id, reason=reason, message=message,
                              content_hash=item.content_hash, size_bytes=item.size_bytes)


def _reusable_predictions(ready: list[_Loaded], model_version_id: int, settings: Settings) -> dict[int, int]:
    with session_scope(settings.database_url) as session:
        existing = store.find_predictions(
            session, model_version_id, [(item.image.uri, item.content_hash) for item in ready]
        )
    return {
        item.image.id: existing[(item.image.uri, item.content_hash)]
        for item in ready
        if (item.image.uri, item.content_hash) in existing
    }


def _predict(items: list[_Loaded], classifier: Classifier) -> list[store.PredictionOutcome]:
    if not items:
        return []
    inputs = np.stack([item.pixels for item in items])
    probabilities = classifier.predict(inputs)
    labels = classifier.contract.labels

    outcomes = []
    for item, row in zip(items, probabilities):
        best = int(np.argmax(row))
        outcomes.append(
            store.PredictionOutcome(
                image_id=item.image.id,
                uri=item.image.uri,
                content_hash=item.content_hash,
                size_bytes=item.size_bytes,
                label=labels[best],
                confidence=float(row[best]),
                probabilities={label: float(value) for label, value in zip(labels, row)},
            )
        )
    return outcomes


def _finish_job(job_id: int, settings: Settings) -> bool:
    with session_scope(settings.database_url) as session:
        return store.finish_job_if_complete(session, job_id)
