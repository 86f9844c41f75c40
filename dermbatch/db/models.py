"""SQLAlchemy models of jobs, images, predictions, model versions, labels and training runs.

`docs/schema.md` describes the tables and the queries they are indexed for.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class JobStatus:
    """Values of `jobs.status`."""

    #: Images are being listed and recorded.
    CREATED = "created"
    #: Batches are queued or running.
    RUNNING = "running"
    #: Every image has a prediction or an error.
    DONE = "done"
    #: Listing or enqueueing failed, for the reason in `jobs.error_message`.
    FAILED = "failed"


class ImageStatus:
    """Values of `images.status`."""

    #: Waiting for its batch.
    PENDING = "pending"
    #: Linked to a prediction.
    DONE = "done"
    #: Could not be classified, for the reason in `error_reason` and `error_message`.
    ERROR = "error"


class ModelStatus:
    """Values of `model_versions.status`."""

    #: Registered, not used by workers.
    CANDIDATE = "candidate"
    #: The version workers use; at most one row has it.
    ACTIVE = "active"
    #: Was active once, replaced by a newer version.
    RETIRED = "retired"
    #: Evaluated and not promoted.
    REJECTED = "rejected"


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    contract: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default=ModelStatus.CANDIDATE, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.CREATED, index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    batch_size: Mapped[int] = mapped_column(Integer)
    total_images: Mapped[int] = mapped_column(Integer, default=0)
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[str] = mapped_column(String(20), default="embedded")
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    model_version: Mapped[ModelVersion] = relationship()


class Prediction(Base):
    """One model version's output for one image content (URI plus content hash).

    Jobs that list the same unchanged file share its prediction through `images.prediction_id`.
    """

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("uri", "content_hash", "model_version_id", name="uq_prediction_content_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    label: Mapped[str] = mapped_column(String(50))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ClassProbability(Base):
    """One class's probability in one prediction, indexed for "probability of class C >= p" queries."""

    __tablename__ = "prediction_probabilities"
    __table_args__ = (Index("ix_prediction_probabilities_label_probability", "label", "probability"),)

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(50), primary_key=True)
    probability: Mapped[float] = mapped_column(Float)


class Image(Base):
    """One image listed by one job, and how it ended."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "uri", name="uq_images_job_uri"),
        Index("ix_images_job_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(20), default=ImageStatus.PENDING)
    error_reason: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    prediction: Mapped[Prediction | None] = relationship()


class Label(Base):
    """A confirmed diagnosis for an image, imported for retraining."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_ref: Mapped[str] = mapped_column(Text, index=True)
    diagnosis: Mapped[str] = mapped_column(String(50))
    source: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """One retrain attempt and its decision."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    new_labels: Mapped[int] = mapped_column(Integer, default=0)
    last_label_id: Mapped[int | None] = mapped_column(Integer)
    baseline_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    candidate_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
