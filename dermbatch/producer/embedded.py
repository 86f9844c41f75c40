"""Running a job on the embedded default: in this process or processes it spawns, no broker."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import queue
import signal
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
from dermbatch.errors import DermbatchError
from dermbatch.settings import Settings, get_settings
from dermbatch.worker.device import WorkerPlan, apply_process_plan, plan_for_this_machine
from dermbatch.worker.batch import BatchResult, LoadedBatch, complete_batch, load_batch

logger = logging.getLogger(__name__)

#: Linux prctl option that sends a signal to a process when its parent exits.
PR_SET_PDEATHSIG = 1


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
    """Classify every batch of a job on this machine, one forward pass per batch.

    The batches are shared among the processes of the worker plan (on a CPU, one process
    per core with one TensorFlow thread each, which measured faster than one process with
    a thread per core). With one planned process, or one batch, everything runs here.
    """
    worker_plan = plan_for_this_machine(settings)
    processes = min(settings.worker_concurrency or worker_plan.processes, len(plan.batches))
    if processes > 1:
        return _run_in_processes(plan, settings, worker_plan, processes, on_batch)

    if worker_plan.processes == 1:
        apply_process_plan(worker_plan, 0)
    else:
        # The plan shares the cores among several processes, but this one process gets them all.
        configure_tensorflow(intra_op_threads=settings.tf_threads or os.cpu_count(), device=settings.device)
    return classify_batches(plan, plan.batches, settings, on_batch)


def classify_batches(
    plan: JobPlan, batches: list[list[int]], settings: Settings,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> list[BatchResult]:
    """Classify batches of a job in this process, reading the next batch while the current one runs."""
    classifier = load_classifier(plan.model_version_id, settings)

    def load(image_ids: list[int]) -> LoadedBatch:
        return load_batch(plan.job_id, image_ids, classifier=classifier, settings=settings,
                          executor=readers, force=plan.force, final_attempt=True)

    results = []
    with ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetcher:
        upcoming = prefetcher.submit(load, batches[0]) if batches else None
        for index in range(len(batches)):
            loaded = upcoming.result()
            if index + 1 < len(batches):
                upcoming = prefetcher.submit(load, batches[index + 1])
            result = complete_batch(loaded, classifier=classifier, model_version_id=plan.model_version_id,
                                    settings=settings)
            logger.info("job %d batch of %d: %d predicted, %d reused, %d errors in %.2f s (%.1f images/s)",
                        plan.job_id, result.claimed, result.predicted, result.reused, result.errors,
                        result.seconds, result.images_per_second)
            results.append(result)
            if on_batch is not None:
                on_batch(result)
    return results


def _run_in_processes(
    plan: JobPlan, settings: Settings, worker_plan: WorkerPlan, processes: int,
    on_batch: Callable[[BatchResult], None] | None,
) -> list[BatchResult]:
    # Spawned, not forked: TensorFlow is not safe in a child forked after it started.
    context = multiprocessing.get_context("spawn")
    results_queue = context.Queue()
    shares = [plan.batches[index::processes] for index in range(processes)]
    children = [
        context.Process(target=_classify_share, args=(plan, shares[index], worker_plan, index, results_queue),
                        name=f"dermbatch-classify-{index}", daemon=True)
        for index in range(processes)
    ]
    for child in children:
        child.start()

    results: list[BatchResult] = []
    try:
        finished = 0
        while finished < processes:
            message = _next_message(results_queue, children, plan.job_id)
            if message is None:
                finished += 1
            elif isinstance(message, BatchResult):
                results.append(message)
                if on_batch is not None:
                    on_batch(message)
            else:
                raise DermbatchError(f"a classify process failed: {message}; finished batches are saved, "
                                     f"continue with `dermbatch resume {plan.job_id}`")
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(timeout=30)
    return results


def _next_message(results_queue, children, job_id: int) -> BatchResult | str | None:
    """Return the next result, error text or end marker from the children; raise if one died silently."""
    while True:
        try:
            return results_queue.get(timeout=1.0)
        except queue.Empty:
            dead = [child for child in children if child.exitcode not in (None, 0)]
            if dead:
                raise DermbatchError(
                    f"classify process {dead[0].name} exited with status {dead[0].exitcode}; finished batches are "
                    f"saved, continue with `dermbatch resume {job_id}`"
                ) from None


def _classify_share(plan: JobPlan, batches: list[list[int]], worker_plan: WorkerPlan, index: int,
                    results_queue) -> None:
    """Classify one process's share of the batches and report each result, then None, on the queue."""
    _exit_with_parent()
    logging.basicConfig(level=os.environ.get("DERMBATCH_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s %(levelname)s %(name)s[{index}]: %(message)s")
    try:
        apply_process_plan(worker_plan, index)
        classify_batches(plan, batches, get_settings(), on_batch=results_queue.put)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
        logger.exception("classify process %d failed", index)
        results_queue.put(f"{type(error).__name__}: {error}")
        return
    results_queue.put(None)


def _exit_with_parent() -> None:
    """Ask Linux to end this process when its parent dies, so a killed `classify` leaves no orphans."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.debug("prctl is not available; this process outlives a killed parent")
