"""Celery tasks: classify one batch of a job's images, and run the scheduled retrain.

Each pool process sets up TensorFlow and its classifiers after the fork (in
`worker_process_init`), never in the main process, because TensorFlow hangs in a child
forked from a process that has initialised it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from celery import Task, signals
from sqlalchemy.exc import DBAPIError, OperationalError

from dermbatch.db import store
from dermbatch.db.engine import dispose_engines, session_scope
from dermbatch.errors import ImageReadError, ModelContractError, ModelNotFoundError
from dermbatch.logredact import install_redaction
from dermbatch.settings import Settings, get_settings
from dermbatch.sources.s3 import dispose_clients
from dermbatch.worker.batch import TransientBatchError, classify_batch, record_batch_failure
from dermbatch.worker.celery_app import CLASSIFY_TASK, RETRAIN_TASK, app
from dermbatch.worker.classifiers import ClassifierCache
from dermbatch.worker.device import WorkerPlan, apply_process_plan, plan_for_this_machine
from dermbatch.worker.metrics import mark_process_dead, observe_batch, start_metrics_server

logger = logging.getLogger(__name__)

#: Seconds to wait before retrying to record a batch's failure while the database is unreachable.
RECORD_FAILURE_RETRY_S = 60.0


@dataclass
class WorkerOptions:
    """Choices `dermbatch worker` makes in the main process; pool processes inherit them through the fork."""

    #: Processes and TensorFlow threads; None plans from the settings in each pool process.
    plan: WorkerPlan | None = None
    #: Whether each pool process loads the active model version before its first batch.
    preload_model: bool = True


@dataclass
class _Attempt:
    """The delivery of a batch that is running: its number among Celery retries, and whether it is the last."""

    number: int
    final: bool


@dataclass
class _ProcessState:
    settings: Settings
    executor: ThreadPoolExecutor
    classifiers: ClassifierCache


worker_options = WorkerOptions()
_state: _ProcessState | None = None


@signals.worker_init.connect
def _start_metrics(**_: Any) -> None:
    start_metrics_server(get_settings())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _install_redaction(logger: logging.Logger | None = None, **_: Any) -> None:
    install_redaction(logger)


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    import billiard

    global _state
    # Connections inherited from the main process must not be shared with it.
    dispose_engines()
    dispose_clients()

    settings = get_settings()
    plan = worker_options.plan or plan_for_this_machine(settings)
    index = getattr(billiard.current_process(), "index", 0) or 0
    device = apply_process_plan(plan, index)
    _state = _ProcessState(
        settings=settings,
        executor=ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="read"),
        classifiers=ClassifierCache(settings),
    )
    logger.info("pool process %d (index %d) on %s: %s", os.getpid(), index, device, plan.describe())

    if worker_options.preload_model:
        try:
            _state.classifiers.poll_active(force=True)
        except Exception:
            # The first batch loads its model version again and records the error if it still fails.
            logger.exception("could not load the active model version at start; loading it on the first batch")


@signals.worker_process_shutdown.connect
def _shutdown_pool_process(**_: Any) -> None:
    if _state is not None:
        _state.executor.shutdown(wait=False, cancel_futures=True)
    mark_process_dead(os.getpid())


def is_transient(error: BaseException) -> bool:
    """Return whether a retry of the whole batch may succeed after `error`."""
    if isinstance(error, TransientBatchError):
        return True
    if isinstance(error, ImageReadError):
        return error.transient
    if isinstance(error, OperationalError):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated
    if isinstance(error, (BotoCoreError, ClientError, ConnectionError, TimeoutError)):
        return True
    # A bundle missing or changed on this machine may be intact on the machine of the next delivery.
    return isinstance(error, (ModelNotFoundError, ModelContractError))


@app.task(name=CLASSIFY_TASK, bind=True)
def classify_batch_task(self: Task, job_id: int, image_ids: list[int], model_version_id: int,
                        force: bool = False) -> dict[str, Any]:
    """Classify one batch of a job's images and record a prediction or an error for each.

    Transient failures are retried with exponential backoff until the batch has had
    `task_max_attempts` attempts. The last attempt records unreadable images as errors,
    and if it fails as a whole, every image left pending becomes a `batch_failed` error.
    """
    state = _process_state()
    settings = state.settings
    attempt = _Attempt(number=self.request.retries + 1,
                       final=self.request.retries + 1 >= settings.task_max_attempts)

    try:
        return _classify(state, job_id, image_ids, model_version_id, force, attempt)
    except Exception as error:
        transient = is_transient(error)
        if transient and not attempt.final:
            delay = settings.retry_backoff_s * 2 ** self.request.retries
            logger.warning("job %d batch of %d images: attempt %d of %d failed (%s: %s); retrying in %.1f s",
                           job_id, len(image_ids), attempt.number, settings.task_max_attempts,
                           type(error).__name__, error, delay)
            raise self.retry(exc=error, countdown=delay, max_retries=None, argsrepr=self.request.argsrepr)
        if not transient:
            logger.error("job %d batch of %d images failed with an unexpected error", job_id, len(image_ids),
                         exc_info=True)
        message = f"batch failed on attempt {attempt.number}: {type(error).__name__}: {error}"
        return _record_failure(self, job_id, image_ids, message, settings)


def _classify(state: _ProcessState, job_id: int, image_ids: list[int], model_version_id: int, force: bool,
              attempt: _Attempt) -> dict[str, Any]:
    settings = state.settings

    # images.attempts counts deliveries. The last allowed delivery records every image it
    # claims unless its process dies or the database fails twice. Pending images past the
    # limit therefore mean a batch that kills its worker every time (out of memory, a
    # crashing decoder), and recording them as errors keeps it from looping forever.
    with session_scope(settings.database_url) as session:
        deliveries = store.max_pending_attempts(session, job_id, image_ids)
    if deliveries >= settings.task_max_attempts:
        message = (f"worker process died {deliveries} times on this batch (for example killed for using "
                   "too much memory); its images were not classified")
        recorded = record_batch_failure(job_id, image_ids, message, settings)
        logger.error("job %d: recorded %d images as batch_failed: %s", job_id, recorded, message)
        return {"job_id": job_id, "claimed": recorded, "errors": recorded}

    # This delivery is the last one allowed, whether earlier ones were retries or died.
    attempt.final = attempt.final or deliveries + 1 >= settings.task_max_attempts
    classifier = state.classifiers.get(model_version_id)
    result = classify_batch(
        job_id, image_ids, classifier=classifier, model_version_id=model_version_id, settings=settings,
        executor=state.executor, force=force, final_attempt=attempt.final,
    )
    observe_batch(result, classifier.version)
    if result.job_done:
        logger.info("job %d is done", job_id)
    state.classifiers.poll_active()
    return {"job_id": job_id, "claimed": result.claimed, "predicted": result.predicted, "reused": result.reused,
            "errors": result.errors, "seconds": round(result.seconds, 3)}


def _record_failure(task: Task, job_id: int, image_ids: list[int], message: str,
                    settings: Settings) -> dict[str, Any]:
    try:
        recorded = record_batch_failure(job_id, image_ids, message, settings)
    except (OperationalError, DBAPIError) as error:
        # NOTE: while the database stays unreachable this retries without a bound, because
        # acknowledging the message would leave the images pending and the job never done.
        logger.error("job %d: could not record the failure of a batch of %d images (%s); retrying in %.0f s",
                     job_id, len(image_ids), error, RECORD_FAILURE_RETRY_S)
        raise task.retry(exc=error, countdown=RECORD_FAILURE_RETRY_S, max_retries=None,
                         argsrepr=task.request.argsrepr) from error
    logger.error("job %d: recorded %d images as batch_failed: %s", job_id, recorded, message)
    return {"job_id": job_id, "claimed": recorded, "errors": recorded}


@app.task(name=RETRAIN_TASK, acks_late=False)
def retrain_task() -> None:
    """Run the scheduled retrain: train on new labels and promote the candidate if it is better."""
    # Acknowledged on receipt, unlike batches: a training run can outlast the visibility
    # timeout, and a redelivered message would start a second run. A lost run waits for the
    # next beat tick.
    from dermbatch.training.retrain import run_scheduled_retrain

    run = run_scheduled_retrain(get_settings())
    logger.info("scheduled retrain run %s ended %s: %s", run.id, run.status, run.reason)


def _process_state() -> _ProcessState:
    global _state
    if _state is None:
        # A solo or threads pool never forks, so worker_process_init does not run.
        _init_pool_process()
    return _state
