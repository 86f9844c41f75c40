"""Database checks of a job's outcome shared by the distributed tests."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import distinct, func, select

from dermbatch.db.engine import session_scope
from dermbatch.db.models import Image, Job, Prediction


@dataclass(frozen=True)
class JobOutcome:
    status: str
    images: int
    distinct_uris: int
    done: int
    errors: int
    pending: int
    distinct_predictions: int
    #: Prediction rows of the job's model version for the job's URIs; equal to `distinct_uris` when none is duplicated.
    prediction_rows: int
    error_reasons: dict[str, int]
    error_messages: list[str]


def job_outcome(database_url: str, job_id: int) -> JobOutcome:
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        in_job = Image.job_id == job_id
        statuses = dict(session.execute(select(Image.status, func.count()).where(in_job).group_by(Image.status)).all())
        uris = select(Image.uri).where(in_job)
        prediction_rows = session.scalar(
            select(func.count()).select_from(Prediction)
            .where(Prediction.uri.in_(uris), Prediction.model_version_id == job.model_version_id)
        )
        reasons = dict(session.execute(
            select(Image.error_reason, func.count()).where(in_job, Image.status == "error").group_by(Image.error_reason)
        ).all())
        return JobOutcome(
            status=job.status,
            images=session.scalar(select(func.count()).where(in_job)),
            distinct_uris=session.scalar(select(func.count(distinct(Image.uri))).where(in_job)),
            done=statuses.get("done", 0),
            errors=statuses.get("error", 0),
            pending=statuses.get("pending", 0),
            distinct_predictions=session.scalar(select(func.count(distinct(Image.prediction_id))).where(in_job)),
            prediction_rows=prediction_rows,
            error_reasons=reasons,
            error_messages=list(session.scalars(select(Image.error_message).where(in_job, Image.status == "error"))),
        )


def image_attempts(database_url: str, job_id: int, uri_suffix: str) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(Image.attempts).where(Image.job_id == job_id, Image.uri.endswith(uri_suffix)))


def wait_for_job(database_url: str, job_id: int, timeout_s: float = 300, workers=()) -> JobOutcome:
    """Poll until the job is done or failed; on timeout, fail with the outcome and the workers' logs."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = job_outcome(database_url, job_id)
        if outcome.status in ("done", "failed"):
            return outcome
        if time.monotonic() > deadline:
            logs = "\n".join(worker.log()[-3000:] for worker in workers)
            raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {outcome}\n{logs}")
        time.sleep(0.5)


def wait_until(condition, timeout_s: float, message: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {message}")
        time.sleep(interval_s)


def job_id_from_output(stdout: str) -> int:
    """Return the job id `dermbatch submit` prints as its first stdout line."""
    return int(stdout.strip().splitlines()[0])
