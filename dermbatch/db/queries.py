"""Read-only queries behind `dermbatch results`, `jobs` and `status`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, desc, exists, func, select
from sqlalchemy.orm import Session

from dermbatch.db.models import ClassProbability, Image, ImageStatus, Job, ModelVersion, Prediction
from dermbatch.errors import JobNotFoundError


@dataclass(frozen=True)
class ProbabilityFilter:
    """Keep images whose probability of `label` is at least `minimum`."""

    label: str
    minimum: float


def get_job(session: Session, job_ref: str | int) -> Job:
    """Return a job by id, or the newest job for "latest"."""
    if str(job_ref) == "latest":
        job = session.scalar(select(Job).order_by(desc(Job.id)).limit(1))
        if job is None:
            raise JobNotFoundError("there are no jobs yet; run `dermbatch classify FOLDER` first")
        return job
    try:
        job_id = int(job_ref)
    except ValueError as error:
        raise JobNotFoundError(f"invalid job id {job_ref!r}; pass a number or 'latest'") from error
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(f"job {job_id} not found; `dermbatch jobs` lists the jobs")
    return job


def job_labels(session: Session, job: Job) -> list[str]:
    """Return the job's model labels in output order."""
    version = session.get(ModelVersion, job.model_version_id)
    return list(version.contract["labels"])


def iter_results(
    session: Session,
    job: Job,
    *,
    label: str | None = None,
    probability_filters: list[ProbabilityFilter] | None = None,
    include_errors: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per image of the job: its prediction (with every class probability) or its error."""
    version = session.get(ModelVersion, job.model_version_id)
    labels = list(version.contract["labels"])
    statement = (
        select(Image, Prediction, ModelVersion.version)
        .outerjoin(Prediction, Image.prediction_id == Prediction.id)
        .outerjoin(ModelVersion, Prediction.model_version_id == ModelVersion.id)
        .where(Image.job_id == job.id)
        .order_by(Image.id)
    )
    if label is not None:
        statement = statement.where(Prediction.label == label)
    for condition in probability_filters or []:
        statement = statement.where(
            exists().where(
                and_(
                    ClassProbability.prediction_id == Image.prediction_id,
                    ClassProbability.label == condition.label,
                    ClassProbability.probability >= condition.minimum,
                )
            )
        )
    if not include_errors or label is not None or probability_filters:
        statement = statement.where(Image.status == ImageStatus.DONE)

    for image, prediction, model_version in session.execute(statement.execution_options(yield_per=1000)):
        row: dict[str, Any] = {
            "job_id": job.id,
            "image_id": image.id,
            "uri": image.uri,
            "status": image.status,
            "model_version": model_version or "",
            "label": prediction.label if prediction else "",
            "confidence": prediction.confidence if prediction else None,
        }
        for name in labels:
            row[f"p_{name}"] = prediction.probabilities.get(name) if prediction else None
        row["error_reason"] = image.error_reason or ""
        row["error_message"] = image.error_message or ""
        row["content_hash"] = image.content_hash or ""
        row["size_bytes"] = image.size_bytes
        yield row


def list_jobs(session: Session, limit: int = 50) -> list[tuple[Job, dict[str, int]]]:
    jobs = session.scalars(select(Job).order_by(desc(Job.id)).limit(limit)).all()
    if not jobs:
        return []
    counts_rows = session.execute(
        select(Image.job_id, Image.status, func.count())
        .where(Image.job_id.in_([job.id for job in jobs]))
        .group_by(Image.job_id, Image.status)
    ).all()
    counts: dict[int, dict[str, int]] = {job.id: {} for job in jobs}
    for job_id, status, count in counts_rows:
        counts[job_id][status] = count
    return [(job, counts[job.id]) for job in jobs]


def label_counts(session: Session, job: Job) -> dict[str, int]:
    rows = session.execute(
        select(Prediction.label, func.count())
        .join(Image, Image.prediction_id == Prediction.id)
        .where(Image.job_id == job.id)
        .group_by(Prediction.label)
    ).all()
    return dict(rows)


def error_counts(session: Session, job: Job) -> dict[str, int]:
    rows = session.execute(
        select(Image.error_reason, func.count())
        .where(Image.job_id == job.id, Image.status == ImageStatus.ERROR)
        .group_by(Image.error_reason)
    ).all()
    return dict(rows)
