"""`dermbatch submit`, `dermbatch worker` and `dermbatch beat`: the distributed pipeline's commands."""

from __future__ import annotations

import os
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dermbatch.db import store
from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import Job, JobStatus
from dermbatch.settings import get_settings

# Progress and status go to stderr, so that stdout carries the job id and the summary.
console = Console(stderr=True)

#: Seconds between database polls of `submit --wait`.
WAIT_POLL_S = 1.0


def submit(
    source: str = typer.Argument(..., help="s3://BUCKET/PREFIX/ or a folder path that every worker can read."),
    wait: bool = typer.Option(False, "--wait", help="Show a progress bar and return when the job ends."),
    force: bool = typer.Option(False, "--force", help="Classify again images this model version already classified."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1,
                                   help="Images per batch message (default DERMBATCH_BATCH_SIZE)."),
    model: str = typer.Option(None, "--model", "-m", help="Registered model version to use instead of the active one."),
    timeout: float = typer.Option(None, "--timeout", min=0,
                                  help="With --wait, seconds to wait before exiting with status 1."),
) -> None:
    """Record a job for SOURCE and queue its batches for `dermbatch worker` processes."""
    from dermbatch.producer.submit import submit_job

    settings = get_settings()
    upgrade_database(settings.database_url)
    with console.status("listing and queueing images"):
        job = submit_job(source, settings, force=force, model_version=model, batch_size=batch_size)
    console.print(f"job {job.job_id}: {job.total_images} images, {job.already_classified} already classified, "
                  f"{job.batches} batches queued, model {job.model_version}")
    typer.echo(job.job_id)
    if not wait:
        return

    status = _wait_for_job(job.job_id, timeout)
    from dermbatch.cli.classify import print_summary

    print_summary(job.job_id)
    if status != JobStatus.DONE:
        raise typer.Exit(1)


def _wait_for_job(job_id: int, timeout_s: float | None) -> str:
    settings = get_settings()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"job {job_id}", total=None, errors=0)
        while True:
            with session_scope(settings.database_url) as session:
                status = session.get(Job, job_id).status
                counts = store.job_counts(session, job_id)
            progress.update(task, total=counts.total, completed=counts.done + counts.error, errors=counts.error)
            if status in (JobStatus.DONE, JobStatus.FAILED):
                return status
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"[red]job {job_id} still {status} after {timeout_s:g} s; "
                              f"{counts.pending} images pending[/]")
                return status
            time.sleep(WAIT_POLL_S)


def worker(
    concurrency: int = typer.Option(None, "--concurrency", "-c", min=1,
                                    help="Pool processes (default DERMBATCH_WORKER_CONCURRENCY, else one per "
                                         "core on CPU and one per GPU)."),
    queues: str = typer.Option("inference", "--queues", "-Q",
                               help="Comma-separated queues to consume: inference, training or both."),
    hostname: str = typer.Option(None, "--hostname", "-n",
                                 help="Celery node name (default dermbatch-PID@HOST, unique per process)."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Log level: DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Start a Celery worker that classifies batches (prefork pool, one model per process)."""
    from dermbatch.worker.celery_app import app
    from dermbatch.worker.device import plan_for_this_machine
    from dermbatch.worker.tasks import worker_options

    settings = get_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    plan = plan_for_this_machine(settings)
    queue_names = [name.strip() for name in queues.split(",") if name.strip()]
    worker_options.plan = plan
    worker_options.preload_model = "inference" in queue_names

    app.worker_main([
        "worker",
        "--pool=prefork",
        f"--concurrency={plan.processes}",
        f"--queues={','.join(queue_names)}",
        f"--hostname={hostname or f'dermbatch-{os.getpid()}@%h'}",
        f"--loglevel={loglevel}",
    ])


def beat(
    schedule_file: str = typer.Option("celerybeat-schedule", "--schedule-file",
                                      help="File where beat stores when each scheduled task last ran."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Log level: DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Start Celery beat, which queues a retrain check every DERMBATCH_RETRAIN_INTERVAL_S seconds."""
    from dermbatch.worker.celery_app import app

    app.start(["beat", f"--schedule={schedule_file}", f"--loglevel={loglevel}"])


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("worker")(worker)
    app.command("beat")(beat)
