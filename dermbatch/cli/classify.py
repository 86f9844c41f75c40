"""`dermbatch classify`: run a job in-process on the embedded default."""

from __future__ import annotations

from pathlib import Path

import typer
from dermbatch.cli.console import console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.queries import error_counts, get_job, label_counts
from dermbatch.producer.embedded import plan_pending, run_job_in_process
from dermbatch.producer.jobs import JobPlan, create_job
from dermbatch.settings import Settings, get_settings
from dermbatch.worker.batch import BatchResult



def classify(
    folder: Path = typer.Argument(..., help="Folder of JPEG or PNG images, searched recursively."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass."),
    model: str = typer.Option(None, "--model", "-m", help="Registered model version to use instead of the active one."),
    force: bool = typer.Option(False, "--force", help="Classify again images this model version already classified."),
) -> None:
    """Classify every image under FOLDER in this process and store the results in the database."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    plan = create_job(str(folder), settings, mode="embedded", force=force, model_version=model,
                      batch_size=batch_size)
    console.print(f"job {plan.job_id}: {plan.total_images} images, model {plan.model_version}")
    _print_totals(_run_with_progress(plan, settings))
    print_summary(plan.job_id)


def resume(
    job: str = typer.Argument(..., help="Job id, or 'latest'."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass."),
) -> None:
    """Classify in this process the images of a job that are still pending, after an interruption."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    plan = plan_pending(job, settings, batch_size)
    console.print(f"job {plan.job_id}: {plan.total_images} images pending, model {plan.model_version}")
    if plan.batches:
        _print_totals(_run_with_progress(plan, settings))
    print_summary(plan.job_id)


def _print_totals(results: list[BatchResult]) -> None:
    predicted = sum(result.predicted for result in results)
    reused = sum(result.reused for result in results)
    errors = sum(result.errors for result in results)
    console.print(f"{predicted} classified, {reused} reused from earlier jobs (same file, same model), "
                  f"{errors} errors")


def _run_with_progress(plan: JobPlan, settings: Settings) -> list[BatchResult]:
    try:
        with _progress() as progress:
            task = progress.add_task("classifying", total=plan.total_images, rate="")
            completed = {"images": 0}

            def advance(result: BatchResult) -> None:
                completed["images"] += result.claimed
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, advance=result.claimed,
                                rate=f"{completed['images'] / elapsed:.1f} images/s")

            return run_job_in_process(plan, settings, on_batch=advance)
    except KeyboardInterrupt:
        console.print(f"interrupted; finished batches are saved. Continue with: dermbatch resume {plan.job_id}")
        raise typer.Exit(130) from None


def print_summary(job_id: int) -> None:
    """Print predicted-class and error counts of a job."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        job = get_job(session, job_id)
        labels = label_counts(session, job)
        errors = error_counts(session, job)
        status = job.status

    table = Table(title=f"job {job_id} ({status})")
    table.add_column("predicted class")
    table.add_column("images", justify="right")
    for name, count in sorted(labels.items()):
        table.add_row(name, str(count))
    for reason, count in sorted(errors.items()):
        table.add_row(f"[red]error: {reason}[/]", str(count))
    table.add_row("[bold]total[/]", str(sum(labels.values()) + sum(errors.values())))
    console.print(table)
    console.print(f"results: dermbatch results {job_id} --format csv > results.csv")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)
    app.command("resume")(resume)
