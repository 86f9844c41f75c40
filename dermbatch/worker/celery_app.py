"""The Celery application: broker, queues, serialization and the delivery settings behind exactly-once results.

Batches are acknowledged only after they finish (`task_acks_late`) and requeued when the
process running them dies (`task_reject_on_worker_lost`), so a crash loses no batch. The
batch function's writes are idempotent, so a batch that runs twice records nothing twice.
Messages are JSON only: a worker never unpickles what a broker hands it.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from dermbatch.settings import Settings, get_settings

#: Name of the task that classifies one batch of a job's images.
CLASSIFY_TASK = "dermbatch.classify_batch"
#: Name of the task that checks for new labels and retrains the model.
RETRAIN_TASK = "dermbatch.retrain"
#: Queue of classification batches.
INFERENCE_QUEUE = "inference"
#: Queue of retrain runs, so that a long training run never holds up classification.
TRAINING_QUEUE = "training"
#: Seconds a new pool process may take to import TensorFlow and load its model before
#: Celery gives up on it; Celery's own default of 4 s is too short on a loaded machine.
PROCESS_START_TIMEOUT_S = 300.0


def configure(app: Celery, settings: Settings) -> None:
    """Apply dermbatch's settings to a Celery application."""
    transport_options = {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        result_backend=settings.result_backend,
        result_backend_transport_options=transport_options,
        # Results live in the database; a result backend is only for callers who want task states.
        task_ignore_result=settings.result_backend is None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=(Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE)),
        task_default_queue=INFERENCE_QUEUE,
        task_routes={CLASSIFY_TASK: {"queue": INFERENCE_QUEUE}, RETRAIN_TASK: {"queue": TRAINING_QUEUE}},
        # Task events let Flower and `celery events` show batches as they are sent and run.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_proc_alive_timeout=PROCESS_START_TIMEOUT_S,
        beat_schedule={
            "retrain": {
                "task": RETRAIN_TASK,
                "schedule": settings.retrain_interval_s,
                "options": {"queue": TRAINING_QUEUE},
            }
        },
    )


def create_app(settings: Settings | None = None) -> Celery:
    """Create the Celery application from the settings (DERMBATCH_* environment variables by default)."""
    app = Celery("dermbatch", include=["dermbatch.worker.tasks"])
    configure(app, settings or get_settings())
    return app


#: The application workers run and producers publish with; `celery -A dermbatch.worker.celery_app` finds it.
app = create_app()
