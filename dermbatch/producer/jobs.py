"""Creating a job from a folder or an S3 prefix: list, record the images, split into batches."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.registry import resolve_model_version
from dermbatch.errors import SourceNotFoundError
from dermbatch.settings import Settings
from dermbatch.sources.folder import list_folder
from dermbatch.sources.uri import is_s3_uri

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class JobPlan:
    """A recorded job and its image ids split into batches."""

    job_id: int
    model_version_id: int
    model_version: str
    force: bool
    batches: list[list[int]]

    @property
    def total_images(self) -> int:
        return sum(len(batch) for batch in self.batches)


def list_source(source: str, settings: Settings) -> Iterator[store.ImageRef]:
    """List the images of a folder path or an s3:// prefix."""
    if is_s3_uri(source):
        from dermbatch.sources.s3 import list_s3

        return list_s3(source, settings)
    return list_folder(Path(source))


def list_images_or_raise(source: str, settings: Settings) -> Iterator[store.ImageRef]:
    """List a source like `list_source`, but raise SourceNotFoundError before yielding when it has no image.

    The first listing page is fetched here, so a missing folder or bucket, wrong
    credentials and an empty prefix all fail before any job is recorded.
    """
    images = iter(list_source(source, settings))
    first = next(images, None)
    if first is None:
        raise SourceNotFoundError(f"no JPEG or PNG images found under {source}; check the path or prefix")
    return itertools.chain([first], images)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of `size` consecutive items, the last one shorter if needed."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of an iterable that a background thread produces up to `depth` items ahead.

    Listing the next page of a source then overlaps recording and queueing the current one.
    An exception raised by the iterable is raised again here, in the consumer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((finished, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((finished, error))

    thread = threading.Thread(target=produce, name="prefetch-listing", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is finished:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def split_batches(image_ids: list[int], batch_size: int) -> list[list[int]]:
    return [image_ids[start:start + batch_size] for start in range(0, len(image_ids), batch_size)]


def source_uri(source: str) -> str:
    """Return the form of a source stored with its job: the s3:// URI, or the absolute folder path."""
    return source if is_s3_uri(source) else str(Path(source).absolute())


def create_job(
    source: str, settings: Settings, *, mode: str, force: bool = False, model_version: str | None = None,
    batch_size: int | None = None,
) -> JobPlan:
    """Record a job with every image the source lists, and return it split into batches.

    The job and its images are written in one transaction, so a failure while listing
    leaves no half-recorded job behind.
    """
    batch_size = batch_size or settings.batch_size
    images = list_images_or_raise(source, settings)
    with session_scope(settings.database_url) as session:
        version = resolve_model_version(session, settings, model_version)
        job = store.create_job(session, source_uri=source_uri(source), model_version_id=version.id,
                               batch_size=batch_size, force=force, mode=mode)
        image_ids = store.add_images(session, job.id, images)
        store.mark_job_running(session, job.id, len(image_ids))
        plan = JobPlan(
            job_id=job.id,
            model_version_id=version.id,
            model_version=version.version,
            force=force,
            batches=split_batches(image_ids, batch_size),
        )
    logger.info("recorded job %d: %d images from %s in %d batches, model %s",
                plan.job_id, plan.total_images, source, len(plan.batches), plan.model_version)
    return plan
