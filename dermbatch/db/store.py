"""Writes and reads of jobs, images and predictions that both embedded runs and workers use.

Every write is idempotent: a batch that is delivered twice, or written again after a crash,
changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, String, and_, bindparam, exists, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dermbatch.db.models import (
    ClassProbability,
    Image,
    ImageStatus,
    Job,
    JobStatus,
    Prediction,
    utcnow,
)

#: Rows per INSERT when recording a job's images.
INSERT_CHUNK = 1000


@dataclass(frozen=True)
class ImageRef:
    """An image found by listing a source: its URI, size in bytes and ETag if the source gives one."""

    uri: str
    size_bytes: int | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class PendingImage:
    """An image row a batch still has to classify."""

    id: int
    uri: str
    attempts: int


@dataclass(frozen=True)
class PredictionOutcome:
    """A classified image: its probabilities in contract label order."""

    image_id: int
    uri: str
    content_hash: str
    size_bytes: int | None
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class ErrorOutcome:
    """An image that could not be classified, with a reason code and a message."""

    image_id: int
    reason: str
    message: str
    content_hash: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class JobCounts:
    total: int
    done: int
    error: int
    pending: int


def create_job(
    session: Session, *, source_uri: str, model_version_id: int, batch_size: int, force: bool, mode: str
) -> Job:
    job = Job(
        source_uri=source_uri,
        model_version_id=model_version_id,
        batch_size=batch_size,
        force=force,
        mode=mode,
        status=JobStatus.CREATED,
    )
    session.add(job)
    session.flush()
    return job


def add_images(
    session: Session, job_id: int, refs: Iterable[ImageRef], *, links: Mapping[str, int] | None = None
) -> list[int]:
    """Insert a job's image rows in chunks and return the ids of the pending ones in listing order.

    `links` maps URIs to existing prediction ids: those images are inserted as done,
    linked to their prediction, and left out of the returned ids.
    """
    links = links or {}
    ids: list[int] = []
    pending: list[dict] = []
    linked: list[dict] = []
    for ref in refs:
        row = {"job_id": job_id, "uri": ref.uri, "size_bytes": ref.size_bytes, "content_hash": ref.content_hash,
               "status": ImageStatus.PENDING, "attempts": 0, "updated_at": utcnow()}
        prediction_id = links.get(ref.uri)
        if prediction_id is None:
            pending.append(row)
        else:
            linked.append({**row, "status": ImageStatus.DONE, "prediction_id": prediction_id})
        if len(pending) >= INSERT_CHUNK:
            ids.extend(_insert_images(session, pending))
            pending = []
        if len(linked) >= INSERT_CHUNK:
            session.execute(insert(Image), linked)
            linked = []
    if pending:
        ids.extend(_insert_images(session, pending))
    if linked:
        session.execute(insert(Image), linked)
    return ids


def _insert_images(session: Session, rows: list[dict]) -> list[int]:
    if session.bind.dialect.name == "postgresql":
        return _insert_pending_images_postgresql(session, rows)
    result = session.execute(insert(Image).returning(Image.id, sort_by_parameter_order=True), rows)
    return [row.id for row in result]


def _insert_pending_images_postgresql(session: Session, rows: list[dict]) -> list[int]:
    # One statement with three array parameters: a multi-row VALUES list of a thousand rows
    # costs psycopg more time to convert than PostgreSQL takes to insert it.
    statement = text(
        "INSERT INTO images (job_id, uri, size_bytes, content_hash, status, attempts, updated_at) "
        "SELECT :job_id, listed.uri, listed.size_bytes, listed.content_hash, :status, 0, :updated_at "
        "FROM unnest(CAST(:uris AS text[]), CAST(:sizes AS bigint[]), CAST(:hashes AS varchar[])) "
        "WITH ORDINALITY AS listed(uri, size_bytes, content_hash, position) "
        "ORDER BY listed.position RETURNING id"
    )
    result = session.execute(statement, {
        "job_id": rows[0]["job_id"],
        "status": ImageStatus.PENDING,
        "updated_at": rows[0]["updated_at"],
        "uris": [row["uri"] for row in rows],
        "sizes": [row["size_bytes"] for row in rows],
        "hashes": [row["content_hash"] for row in rows],
    })
    # PostgreSQL returns the ids in insertion order in practice, but does not promise it.
    # Only the set of ids matters to the caller, which splits it into batches.
    return [row.id for row in result]


def max_pending_attempts(session: Session, job_id: int, image_ids: Sequence[int]) -> int:
    """Return the most deliveries any still-pending image of a batch has had (0 when none is pending)."""
    condition = and_(Image.job_id == job_id, Image.id.in_(image_ids), Image.status == ImageStatus.PENDING)
    return session.scalar(select(func.coalesce(func.max(Image.attempts), 0)).where(condition)) or 0


def claim_pending(session: Session, job_id: int, image_ids: Sequence[int]) -> list[PendingImage]:
    """Count a delivery for a batch's still-pending images and return them.

    Images that an earlier delivery already finished are left out, so a redelivered batch
    only works on what is left.
    """
    condition = and_(Image.job_id == job_id, Image.id.in_(image_ids), Image.status == ImageStatus.PENDING)
    session.execute(update(Image).where(condition).values(attempts=Image.attempts + 1))
    rows = session.execute(select(Image.id, Image.uri, Image.attempts).where(condition).order_by(Image.id))
    return [PendingImage(id=row.id, uri=row.uri, attempts=row.attempts) for row in rows]


def find_predictions(
    session: Session, model_version_id: int, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Return {(uri, content_hash): prediction id} for the keys this model version already classified."""
    keys = list(keys)
    if not keys:
        return {}
    uris = {uri for uri, _ in keys}
    rows = session.execute(
        select(Prediction.id, Prediction.uri, Prediction.content_hash).where(
            Prediction.model_version_id == model_version_id, Prediction.uri.in_(uris)
        )
    )
    requested_keys = set(keys)
    return {(row.uri, row.content_hash): row.id for row in rows if (row.uri, row.content_hash) in requested_keys}


def record_outcomes(
    session: Session,
    *,
    model_version_id: int,
    predictions: Sequence[PredictionOutcome],
    errors: Sequence[ErrorOutcome],
    reused: dict[int, int] | None = None,
    replace: bool = False,
) -> None:
    """Write a batch's predictions and errors and mark its images finished.

    Predictions are inserted only if no row exists for (uri, content hash, model version),
    or overwritten when `replace` is set. Images are updated only while still pending.
    `reused` maps image ids to existing prediction ids to link without a new forward pass.
    """
    links = dict(reused or {})
    if predictions:
        links.update(_upsert_predictions(session, model_version_id, predictions, replace=replace))

    now = utcnow()
    by_id = {outcome.image_id: outcome for outcome in predictions}
    rows = []
    for image_id, prediction_id in links.items():
        outcome = by_id.get(image_id)
        rows.append({"b_id": image_id, "b_status": ImageStatus.DONE, "b_prediction_id": prediction_id,
                     "b_reason": None, "b_message": None, "b_updated_at": now,
                     "b_hash": outcome.content_hash if outcome else None,
                     "b_size": outcome.size_bytes if outcome else None})
    for error in errors:
        rows.append({"b_id": error.image_id, "b_status": ImageStatus.ERROR, "b_prediction_id": None,
                     "b_reason": error.reason, "b_message": error.message, "b_updated_at": now,
                     "b_hash": error.content_hash, "b_size": error.size_bytes})
    if rows:
        # One executemany for the whole batch; each row changes only an image still pending.
        session.connection().execute(_FINISH_PENDING_IMAGE, rows)


_IMAGES = Image.__table__
_FINISH_PENDING_IMAGE = (
    update(_IMAGES)
    .where(_IMAGES.c.id == bindparam("b_id"), _IMAGES.c.status == ImageStatus.PENDING)
    .values(
        status=bindparam("b_status"),
        prediction_id=bindparam("b_prediction_id"),
        error_reason=bindparam("b_reason"),
        error_message=bindparam("b_message"),
        updated_at=bindparam("b_updated_at"),
        content_hash=func.coalesce(bindparam("b_hash", type_=String), _IMAGES.c.content_hash),
        size_bytes=func.coalesce(bindparam("b_size", type_=BigInteger), _IMAGES.c.size_bytes),
    )
)


def _upsert_predictions(
    session: Session, model_version_id: int, outcomes: Sequence[PredictionOutcome], *, replace: bool
) -> dict[int, int]:
    dialect_insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    rows = [
        {"uri": o.uri, "content_hash": o.content_hash, "model_version_id": model_version_id, "label": o.label,
         "confidence": o.confidence, "probabilities": o.probabilities, "created_at": utcnow()}
        for o in outcomes
    ]
    statement = dialect_insert(Prediction).values(rows)
    key = ["uri", "content_hash", "model_version_id"]
    if replace:
        statement = statement.on_conflict_do_update(
            index_elements=key,
            set_={name: statement.excluded[name] for name in ("label", "confidence", "probabilities", "created_at")},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=key)
    session.execute(statement)

    ids = find_predictions(session, model_version_id, [(o.uri, o.content_hash) for o in outcomes])
    links = {o.image_id: ids[(o.uri, o.content_hash)] for o in outcomes}
    _upsert_class_probabilities(session, outcomes, links)
    return links


def _upsert_class_probabilities(
    session: Session, outcomes: Sequence[PredictionOutcome], links: dict[int, int]
) -> None:
    rows = [
        {"prediction_id": links[o.image_id], "label": label, "probability": probability}
        for o in outcomes
        for label, probability in o.probabilities.items()
    ]
    # An executemany of one small statement: a multi-row VALUES statement of a batch's
    # hundreds of rows cost more to compile than to run.
    session.connection().execute(_UPSERT_CLASS_PROBABILITY, rows)


_UPSERT_CLASS_PROBABILITY = text(
    "INSERT INTO prediction_probabilities (prediction_id, label, probability) "
    "VALUES (:prediction_id, :label, :probability) "
    "ON CONFLICT (prediction_id, label) DO UPDATE SET probability = excluded.probability"
)


def mark_job_running(session: Session, job_id: int, total_images: int) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING, total_images=total_images,
                                                    started_at=utcnow())
    )


def mark_job_failed(session: Session, job_id: int, message: str) -> None:
    """Mark a job failed with the reason; its batches already queued still run, but it never becomes done."""
    session.execute(
        update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED, error_message=message,
                                                    finished_at=utcnow())
    )


def finish_job_if_complete(session: Session, job_id: int) -> bool:
    """Mark a running job done when no image is pending; return whether this call did it.

    Each batch calls this after committing its own writes, so whichever batch commits last
    reads every other batch's rows and finishes the job.
    """
    pending = exists().where(Image.job_id == job_id, Image.status == ImageStatus.PENDING)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, ~pending)
        .values(status=JobStatus.DONE, finished_at=utcnow())
    )
    return result.rowcount == 1


def job_counts(session: Session, job_id: int) -> JobCounts:
    rows = session.execute(
        select(Image.status, func.count()).where(Image.job_id == job_id).group_by(Image.status)
    ).all()
    counts = {status: count for status, count in rows}
    done = counts.get(ImageStatus.DONE, 0)
    error = counts.get(ImageStatus.ERROR, 0)
    pending = counts.get(ImageStatus.PENDING, 0)
    return JobCounts(total=done + error + pending, done=done, error=error, pending=pending)
