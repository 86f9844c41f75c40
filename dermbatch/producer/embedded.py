"""Running a job in-process on the embedded default: no broker, no worker processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.models import Image, ImageStatus, ModelVersion
from dermbatch.db.queries import get_job
from dermbatch.db.registry import bundle_for
from dermbatch.model.classifier import Classifier, configure_tensorflow
from dermbatch.producer.jobs import JobPlan
from dermbatch.settings import Settings
from dermbatch.worker.batch import BatchResult, LoadedBatch, complete_batch, load_batch

logger = logging.getLogger(__name__)


def load_classifier(model_version_id: int, settings: Settings) -> Classifier:
    with session_scope(settings.database_url) as session:
        row = session.get(ModelVersion, model_version_id)
        bundle = bundle_for(row)
    return Classifier(bundle)


def plan_pending(job_ref: str, settings: Settings, batch_size: int | None = None) -> JobPlan:
    """Return a plan over the still-pending images of an existing job, to finish it in this process."""
    with session_scope(settings.database_url) as session:
        job = get_job(session, job_ref)
        image_ids = list(session.scalars(
            select(Image.id).where(Image.job_id == job.id, Image.status == ImageStatus.PENDING).order_by(Image.id)
        ))
        size = batch_size or job.batch_size
        if not image_ids:
            store.finish_job_if_complete(session, job.id)
        return JobPlan(
            job_id=job.id,
            model_version_id=job.model_version_id,
            model_version=job.model_version.version,
            force=job.force,
            batches=[image_ids[start:start + size] for start in range(0, len(image_ids), size)],
        )


def run_job_in_process(
    plan: JobPlan, settings: Settings, on_batch: Callable[[BatchResult], None] | None = None
) -> list[BatchResult]:
    """Classify every batch of a job in this process, one forward pass per batch.

    The next batch is read and decoded on background threads while the current one runs
    its forward pass, so reading overlaps computing.
    """
    configure_tensorflow(intra_op_threads=settings.tf_threads or os.cpu_count(), device=settings.device)
    classifier = load_classifier(plan.model_version_id, settings)

    def load(image_ids: list[int]) -> LoadedBatch:
        return load_batch(plan.job_id, image_ids, classifier=classifier, settings=settings,
                          executor=readers, force=plan.force, final_attempt=True)

    results = []
    with ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetcher:
        upcoming = prefetcher.submit(load, plan.batches[0]) if plan.batches else None
        for index in range(len(plan.batches)):
            loaded = upcoming.result()
            if index + 1 < len(plan.batches):
                upcoming = prefetcher.submit(load, plan.batches[index + 1])
            result = complete_batch(loaded, classifier=classifier, model_version_id=plan.model_version_id,
                                    settings=settings)
            logger.info("job %d batch of %d: %d predicted, %d reused, %d errors in %.2f s (%.1f images/s)",
                        plan.job_id, result.claimed, result.predicted, result.reused, result.errors,
                        result.seconds, result.images_per_second)
            results.append(result)
            if on_batch is not None:
                on_batch(result)
    return results
