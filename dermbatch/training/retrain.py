"""Scheduled retraining: train a challenger when confirmed labels arrive, promote it only if it is no worse.

`run_scheduled_retrain(settings)` is the whole decision, for a Celery beat task on the
`training` queue or for `dermbatch retrain`. Every call records one `training_runs` row whose
status is one of `TrainingRunStatus` and whose reason explains the decision.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import Label, ModelStatus, ModelVersion, TrainingRun, utcnow
from dermbatch.db.registry import active_version, bundle_for, promote, register_bundle, resolve_model_version
from dermbatch.errors import ConfigurationError
from dermbatch.settings import Settings
from dermbatch.training.split import DEFAULT_SPLIT_FILE, read_split, split_sha256

logger = logging.getLogger(__name__)

#: A "running" row older than this is treated as a crashed run and no longer blocks a new one.
STALE_RUN_AFTER = timedelta(hours=12)


class TrainingRunStatus:
    """Values of `training_runs.status`."""

    #: Training or evaluation in progress.
    RUNNING = "running"
    #: Too few new labels, or another run in progress; nothing was trained.
    SKIPPED = "skipped"
    #: The challenger was at least as good as the active model and is now active.
    PROMOTED = "promoted"
    #: The challenger was worse on balanced accuracy or melanoma recall; it stays registered as rejected.
    REJECTED = "rejected"
    #: An error stopped the run. The reason contains the error, and the next run retries the same labels.
    FAILED = "failed"


def run_scheduled_retrain(
    settings: Settings,
    *,
    config=None,
    split_file: Path | None = None,
    train: Callable[..., Any] | None = None,
) -> TrainingRun:
    """Retrain if labels arrived since the last decided run; return the recorded `TrainingRun` row.

    `config` is a `TrainConfig`; by default it is read from `settings.retrain_config`, or is the
    shipped model's recipe with `settings.weights_dir`. `split_file` defaults to
    `settings.split_file`, then to the stored HAM10000 split. `train` replaces `train_bundle`
    (same arguments), so a test can train a tiny model on a tiny dataset.
    """
    split_file = split_file or settings.split_file or DEFAULT_SPLIT_FILE
    config = config or retrain_config(settings)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        run, labels = _start_run(session, settings)
        if run.status != TrainingRunStatus.RUNNING:
            return run
        run_id = run.id

    try:
        outcome = _train_and_decide(settings, run_id, labels, config=config, split_file=split_file, train=train)
    except Exception as error:  # noqa: BLE001 - every failure is recorded on the run, then re-raised
        logger.exception("retrain run %s failed", run_id)
        with session_scope(settings.database_url) as session:
            run = session.get(TrainingRun, run_id)
            _finish(run, TrainingRunStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    with session_scope(settings.database_url) as session:
        run = session.get(TrainingRun, run_id)
        _finish(run, outcome["status"], outcome["reason"])
        run.baseline_version_id = outcome.get("baseline_version_id")
        run.candidate_version_id = outcome.get("candidate_version_id")
        run.metrics = outcome.get("metrics", {})
    logger.info("retrain run %s %s: %s", run_id, run.status, run.reason)
    return run


def retrain_config(settings: Settings):
    """Return the TrainConfig of scheduled retrains: the shipped recipe, updated from `settings.retrain_config`."""
    from dermbatch.training.train import TrainConfig

    if settings.retrain_config is None:
        return TrainConfig(weights_dir=settings.weights_dir)
    try:
        options = json.loads(Path(settings.retrain_config).read_text(encoding="utf-8"))
        config = TrainConfig(**{"weights_dir": settings.weights_dir, **options})
    except (OSError, ValueError, TypeError) as error:
        raise ConfigurationError(
            f"invalid DERMBATCH_RETRAIN_CONFIG {settings.retrain_config}: {error}; expected a JSON object of "
            "TrainConfig fields such as {\"epochs\": 10}"
        ) from error
    for name in ("weights_dir", "cache_dir"):
        if isinstance(getattr(config, name), str):
            setattr(config, name, Path(getattr(config, name)))
    return config


def _start_run(session: Session, settings: Settings) -> tuple[TrainingRun, list[Label]]:
    """Record a running row, or a skipped row when nothing is to be done; return it with the labels to use."""
    last_decided = session.scalar(
        select(func.max(TrainingRun.last_label_id)).where(
            TrainingRun.status.in_([TrainingRunStatus.PROMOTED, TrainingRunStatus.REJECTED])
        )
    ) or 0

    newest = session.scalar(select(func.max(Label.id))) or 0
    new_labels = session.scalar(select(func.count(Label.id)).where(Label.id > last_decided)) or 0
    running = session.scalar(
        select(TrainingRun).where(
            TrainingRun.status == TrainingRunStatus.RUNNING,
            TrainingRun.started_at > utcnow() - STALE_RUN_AFTER,
        )
    )
    run = TrainingRun(status=TrainingRunStatus.RUNNING, new_labels=new_labels, last_label_id=newest)
    session.add(run)

    if running is not None:
        _finish(run, TrainingRunStatus.SKIPPED, f"retrain run {running.id} is still running")
    elif new_labels < settings.labels_min_new:
        _finish(run, TrainingRunStatus.SKIPPED,
                f"{new_labels} new labels since label id {last_decided}; {settings.labels_min_new} needed "
                "(DERMBATCH_LABELS_MIN_NEW)")
    elif settings.data_dir is None:
        _finish(run, TrainingRunStatus.FAILED, "DERMBATCH_DATA_DIR is not set; it names the HAM10000 folder to train on")
    if run.status != TrainingRunStatus.RUNNING:
        run.last_label_id = last_decided or None
    session.flush()

    labels = list(session.scalars(select(Label).where(Label.id <= newest).order_by(Label.id)))
    session.expunge_all()
    return run, labels


def _train_and_decide(settings: Settings, run_id: int, labels: list[Label], *, config, split_file: Path,
                      train: Callable[..., Any] | None) -> dict[str, Any]:
    from dermbatch.training.labels import labelled_images
    from dermbatch.training.train import TrainConfig, train_bundle

    config = config or TrainConfig(weights_dir=settings.weights_dir)
    train = train or train_bundle
    extra, left_out = labelled_images(labels, settings.data_dir, read_split(split_file))

    version = f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-run{run_id}"
    challenger = train(Path(settings.data_dir), Path(settings.models_dir) / version, version=version,
                       config=config, split_file=split_file, extra_train=extra)

    with session_scope(settings.database_url) as session:
        baseline = active_version(session) or resolve_model_version(session, settings)
        baseline_metrics = _baseline_metrics(session, baseline, settings, split_file)
        candidate = register_bundle(session, challenger)
        status, reason = compare(challenger.metadata.metrics, baseline_metrics, baseline.version)
        if status == TrainingRunStatus.PROMOTED:
            promote(session, candidate.version)
        else:
            candidate.status = ModelStatus.REJECTED
        return {
            "status": status,
            "reason": f"{reason}; trained with {len(extra)} labelled images ({left_out['held_out']} held-out "
                      f"and {left_out['unresolved']} unreadable labels left out)",
            "baseline_version_id": baseline.id,
            "candidate_version_id": candidate.id,
            "metrics": {"challenger": _summary(challenger.metadata.metrics), "baseline": _summary(baseline_metrics),
                        "challenger_version": version, "baseline_version": baseline.version},
        }


def compare(challenger: dict[str, Any], baseline: dict[str, Any], baseline_version: str) -> tuple[str, str]:
    """Decide promotion: balanced accuracy at least the baseline's and melanoma recall not lower."""
    new_balanced, old_balanced = challenger["balanced_accuracy"], baseline["balanced_accuracy"]
    new_recall = (challenger.get("melanoma") or {}).get("sensitivity") or 0.0
    old_recall = (baseline.get("melanoma") or {}).get("sensitivity") or 0.0
    figures = (f"balanced accuracy {new_balanced:.4f} vs {old_balanced:.4f}, "
               f"melanoma recall {new_recall:.4f} vs {old_recall:.4f} of {baseline_version}")
    if new_balanced < old_balanced:
        return TrainingRunStatus.REJECTED, f"balanced accuracy dropped: {figures}"
    if new_recall < old_recall:
        return TrainingRunStatus.REJECTED, f"melanoma recall dropped: {figures}"
    return TrainingRunStatus.PROMOTED, f"no worse: {figures}"


def _baseline_metrics(session: Session, baseline: ModelVersion, settings: Settings, split_file: Path) -> dict[str, Any]:
    """Return the active model's test metrics, evaluating it now unless they were measured on this split."""
    metrics = baseline.metrics or {}
    if metrics.get("split") == "test" and metrics.get("split_sha256") == split_sha256(split_file):
        return metrics
    from dermbatch.training.evaluate import evaluate_bundle

    logger.info("evaluating active model %s on the test split; its stored metrics are from another split",
                baseline.version)
    metrics, _, _ = evaluate_bundle(bundle_for(baseline), Path(settings.data_dir), split="test", split_file=split_file)
    return metrics


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "balanced_accuracy", "macro_auc", "ece", "melanoma", "n_images")
    return {key: metrics.get(key) for key in keys}


def _finish(run: TrainingRun, status: str, reason: str) -> None:
    run.status = status
    run.reason = reason
    run.finished_at = utcnow()
