"""`dermbatch results`, `jobs` and `status`: reading what jobs produced."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import IO

import typer
from dermbatch.cli.console import console
from rich.table import Table

from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import require_schema
from dermbatch.db.queries import ProbabilityFilter, get_job, iter_results, job_labels, list_jobs
from dermbatch.db.store import job_counts
from dermbatch.errors import DermbatchError
from dermbatch.settings import get_settings



class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def parse_probability_filter(text: str) -> ProbabilityFilter:
    """Parse `LABEL=MIN` (for example `mel=0.3`) into a filter."""
    label, separator, value = text.partition("=")
    try:
        minimum = float(value)
    except ValueError:
        minimum = -1.0
    if not separator or not label or not 0.0 <= minimum <= 1.0:
        raise typer.BadParameter(f"invalid filter {text!r}; expected LABEL=MIN with MIN in 0..1, such as mel=0.3",
                                 param_hint="--min-prob")
    return ProbabilityFilter(label=label.strip(), minimum=minimum)


def results(
    job: str = typer.Argument(..., help="Job id, or 'latest'."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    output: Path = typer.Option(None, "--output", "-o", help="File to write instead of standard output."),
    label: str = typer.Option(None, "--label", help="Only images predicted as this class, such as mel."),
    min_prob: list[str] = typer.Option(
        None, "--min-prob", metavar="LABEL=MIN",
        help="Only images whose probability of LABEL is at least MIN (0..1), such as mel=0.3; repeatable.",
    ),
) -> None:
    """Print or export one row per image of a job: prediction, every class probability, or error."""
    filters = [parse_probability_filter(text) for text in (min_prob or [])]
    if output is not None and output_format is OutputFormat.table:
        raise typer.BadParameter("--output writes csv or json; add --format csv or --format json",
                                 param_hint="--output")
    settings = get_settings()
    require_schema(settings.database_url)
    with session_scope(settings.database_url) as session:
        job_row = get_job(session, job)
        labels = job_labels(session, job_row)
        _check_labels(labels, label, filters)
        rows = iter_results(session, job_row, label=label, probability_filters=filters)

        if output_format is OutputFormat.table:
            _print_table(rows, labels, job_row.id)
            return
        stream = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            if output_format is OutputFormat.csv:
                _write_csv(rows, stream, labels)
            else:
                _write_json(rows, stream)
        finally:
            if output:
                stream.close()


def _check_labels(labels: list[str], label: str | None, filters: list[ProbabilityFilter]) -> None:
    for name in [label] + [f.label for f in filters]:
        if name is not None and name not in labels:
            raise DermbatchError(f"unknown class {name!r}; this job's model has classes {', '.join(labels)}")


def _columns(labels: list[str]) -> list[str]:
    return (["job_id", "image_id", "uri", "status", "model_version", "label", "confidence"]
            + [f"p_{name}" for name in labels]
            + ["error_reason", "error_message", "content_hash", "size_bytes"])


def _write_csv(rows, stream: IO[str], labels: list[str]) -> None:
    writer = csv.DictWriter(stream, fieldnames=_columns(labels))
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _write_json(rows, stream: IO[str]) -> None:
    stream.write("[")
    for index, row in enumerate(rows):
        stream.write(("," if index else "") + "\n  " + json.dumps(row, ensure_ascii=False))
    stream.write("\n]\n")


def _print_table(rows, labels: list[str], job_id: int) -> None:
    table = Table(title=f"job {job_id}")
    for column in ["image_id", "file", "label", "confidence"] + labels + ["error"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        probabilities = [_format_probability(row[f"p_{name}"]) for name in labels]
        error = f"{row['error_reason']}: {row['error_message']}" if row["error_reason"] else ""
        table.add_row(str(row["image_id"]), Path(row["uri"]).name, row["label"],
                      _format_probability(row["confidence"]), *probabilities, error)
    console.print(table)


def _format_probability(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def jobs(limit: int = typer.Option(50, help="Number of most recent jobs to list.")) -> None:
    """List recent jobs with their progress."""
    settings = get_settings()
    require_schema(settings.database_url)
    table = Table(title="jobs")
    for column in ("id", "status", "source", "model", "images", "done", "errors", "pending", "created"):
        table.add_column(column)
    with session_scope(settings.database_url) as session:
        for job, counts in list_jobs(session, limit):
            table.add_row(
                str(job.id), job.status, job.source_uri, job.model_version.version, str(job.total_images),
                str(counts.get("done", 0)), str(counts.get("error", 0)), str(counts.get("pending", 0)),
                job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
    console.print(table)


def status(job: str = typer.Argument(..., help="Job id, or 'latest'.")) -> None:
    """Show a job's progress: images done, errors, pending, and throughput."""
    settings = get_settings()
    require_schema(settings.database_url)
    with session_scope(settings.database_url) as session:
        job_row = get_job(session, job)
        counts = job_counts(session, job_row.id)
        console.print(f"job {job_row.id}: {job_row.status}")
        console.print(f"  source        {job_row.source_uri}")
        console.print(f"  model         {job_row.model_version.version}")
        console.print(f"  images        {counts.total}")
        console.print(f"  predicted     {counts.done}")
        console.print(f"  errors        {counts.error}")
        console.print(f"  pending       {counts.pending}")
        if job_row.started_at is not None:
            end = job_row.finished_at or _now_like(job_row.started_at)
            seconds = max((end - job_row.started_at).total_seconds(), 1e-9)
            finished = counts.done + counts.error
            console.print(f"  elapsed       {seconds:.1f} s")
            console.print(f"  throughput    {finished / seconds:.1f} images/s")


def _now_like(reference):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return now if reference.tzinfo else now.replace(tzinfo=None)


def register(app: typer.Typer) -> None:
    app.command("results")(results)
    app.command("jobs")(jobs)
    app.command("status")(status)
