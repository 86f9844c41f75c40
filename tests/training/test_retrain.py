"""The scheduled retrain on a tiny dataset: skip without new labels, train, evaluate and decide with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import Label, ModelStatus, ModelVersion, TrainingRun
from dermbatch.db.registry import active_version, register_bundle
from dermbatch.model.bundle import load_bundle, write_metadata
from dermbatch.settings import Settings
from dermbatch.training.retrain import TrainingRunStatus, compare, run_scheduled_retrain
from dermbatch.training.split import read_split, split_sha256
from dermbatch.training.train import TrainConfig, train_bundle

#: A network and schedule small enough to train in a few seconds.
TINY_CONFIG = TrainConfig(backbone="small-cnn", input_size=32, head_epochs=0, epochs=1, batch_size=16,
                          cache_dir=None, tune_bias=False)


def _settings(tmp_path: Path, data_dir: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'dermbatch.db'}", data_dir=data_dir,
                    models_dir=tmp_path / "models", labels_min_new=1)


def _register_baseline(settings: Settings, bundle_dir: Path, *, balanced_accuracy: float, mel_recall: float,
                       split_file: Path) -> None:
    bundle = load_bundle(bundle_dir)
    bundle.metadata.metrics = {"split": "test", "split_sha256": split_sha256(split_file),
                               "balanced_accuracy": balanced_accuracy, "melanoma": {"sensitivity": mel_recall}}
    write_metadata(bundle.path, bundle.metadata)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        register_bundle(session, load_bundle(bundle_dir), status=ModelStatus.ACTIVE)


def _add_labels(settings: Settings, data_dir: Path, split_file: Path, count: int) -> None:
    train_ids = [row.image_id for row in read_split(split_file) if row.split == "train"][:count]
    with session_scope(settings.database_url) as session:
        for image_id in train_ids:
            row = next(r for r in read_split(split_file) if r.image_id == image_id)
            session.add(Label(image_ref=str(data_dir / "images" / f"{image_id}.jpg"), diagnosis=row.dx, source="test"))
        held_out = next(row for row in read_split(split_file) if row.split == "test")
        session.add(Label(image_ref=held_out.image_id, diagnosis=held_out.dx, source="test"))
        session.add(Label(image_ref="s3://bucket/elsewhere.jpg", diagnosis="mel", source="test"))


def _fail_if_called(*args, **kwargs):
    raise AssertionError("the retrain trained a model although no labels arrived")


@pytest.fixture()
def baseline_dir(tmp_path, tiny_bundle_dir) -> Path:
    import shutil

    path = tmp_path / "baseline"
    shutil.copytree(tiny_bundle_dir, path)
    return path


def test_no_new_labels_skips_without_training(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    _register_baseline(settings, baseline_dir, balanced_accuracy=0.0, mel_recall=0.0, split_file=synthetic_split)

    run = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split, train=_fail_if_called)

    assert run.status == TrainingRunStatus.SKIPPED
    assert "0 new labels" in run.reason
    assert run.candidate_version_id is None


def test_new_labels_promote_challenger(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    _register_baseline(settings, baseline_dir, balanced_accuracy=0.0, mel_recall=0.0, split_file=synthetic_split)
    _add_labels(settings, synthetic_dir, synthetic_split, count=5)

    run = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split)

    assert run.status == TrainingRunStatus.PROMOTED, run.reason
    assert "no worse" in run.reason
    assert "5 labelled images" in run.reason
    assert "1 held-out and 1 unreadable" in run.reason
    assert run.new_labels == 7
    assert run.last_label_id == 7
    assert run.finished_at is not None
    with session_scope(settings.database_url) as session:
        active = active_version(session)
        assert active.id == run.candidate_version_id
        assert active.metrics["split"] == "test"
        assert (Path(active.path) / "model.json").is_file()
        assert session.get(ModelVersion, run.baseline_version_id).status == ModelStatus.RETIRED


def test_worse_challenger_is_rejected(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    _register_baseline(settings, baseline_dir, balanced_accuracy=1.01, mel_recall=1.0, split_file=synthetic_split)
    _add_labels(settings, synthetic_dir, synthetic_split, count=3)

    run = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split)

    assert run.status == TrainingRunStatus.REJECTED
    assert run.reason.startswith("balanced accuracy dropped")
    assert run.metrics["baseline"]["balanced_accuracy"] == 1.01
    with session_scope(settings.database_url) as session:
        assert session.get(ModelVersion, run.candidate_version_id).status == ModelStatus.REJECTED
        assert active_version(session).id == run.baseline_version_id


def test_rerun_without_new_labels_skips(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    _register_baseline(settings, baseline_dir, balanced_accuracy=1.01, mel_recall=1.0, split_file=synthetic_split)
    _add_labels(settings, synthetic_dir, synthetic_split, count=2)
    first = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split)

    second = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split, train=_fail_if_called)

    assert first.status == TrainingRunStatus.REJECTED
    assert second.status == TrainingRunStatus.SKIPPED
    assert second.last_label_id == first.last_label_id


def test_failed_run_is_recorded_and_retried(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    _register_baseline(settings, baseline_dir, balanced_accuracy=0.0, mel_recall=0.0, split_file=synthetic_split)
    _add_labels(settings, synthetic_dir, synthetic_split, count=2)

    def broken_train(*args, **kwargs):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split, train=broken_train)
    retried = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split)

    with session_scope(settings.database_url) as session:
        statuses = [run.status for run in session.scalars(select(TrainingRun).order_by(TrainingRun.id))]
        failed = session.scalar(select(TrainingRun).where(TrainingRun.status == TrainingRunStatus.FAILED))
    assert statuses == [TrainingRunStatus.FAILED, TrainingRunStatus.PROMOTED]
    assert "disk full" in failed.reason
    assert retried.new_labels == 4


def test_unscored_baseline_is_evaluated(tmp_path, synthetic_dir, synthetic_split, baseline_dir,
                                                        monkeypatch):
    monkeypatch.setattr("dermbatch.training.data.DEFAULT_CACHE_DIR", tmp_path / "cache")
    settings = _settings(tmp_path, synthetic_dir)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        register_bundle(session, load_bundle(baseline_dir), status=ModelStatus.ACTIVE)
    _add_labels(settings, synthetic_dir, synthetic_split, count=2)

    run = run_scheduled_retrain(settings, config=TINY_CONFIG, split_file=synthetic_split)

    assert run.status in (TrainingRunStatus.PROMOTED, TrainingRunStatus.REJECTED)
    assert run.metrics["baseline"]["n_images"] == sum(1 for row in read_split(synthetic_split) if row.split == "test")


def test_missing_data_dir_fails_with_reason(tmp_path, synthetic_dir, synthetic_split, baseline_dir):
    settings = _settings(tmp_path, synthetic_dir)
    upgrade_database(settings.database_url)
    _add_labels(settings, synthetic_dir, synthetic_split, count=1)

    run = run_scheduled_retrain(settings.model_copy(update={"data_dir": None}), config=TINY_CONFIG,
                                split_file=synthetic_split, train=_fail_if_called)

    assert run.status == TrainingRunStatus.FAILED
    assert "DERMBATCH_DATA_DIR" in run.reason


def test_compare_rejects_lower_melanoma_recall():
    challenger = {"balanced_accuracy": 0.80, "melanoma": {"sensitivity": 0.70}}
    baseline = {"balanced_accuracy": 0.78, "melanoma": {"sensitivity": 0.75}}

    status, reason = compare(challenger, baseline, "v1")

    assert status == TrainingRunStatus.REJECTED
    assert reason.startswith("melanoma recall dropped")


def test_train_bundle_saves_metrics_and_plots(tmp_path, synthetic_dir, synthetic_split):
    bundle = train_bundle(synthetic_dir, tmp_path / "tiny", version="tiny-trained", config=TINY_CONFIG,
                          split_file=synthetic_split)

    reloaded = load_bundle(tmp_path / "tiny")
    assert reloaded.metadata.metrics["split_sha256"] == split_sha256(synthetic_split)
    assert set(reloaded.metadata.metrics["per_class"]) == set(bundle.contract.labels)
    assert reloaded.metadata.training["split_sha256"] == split_sha256(synthetic_split)
    assert reloaded.metadata.training["backbone"] == "small-cnn"
    assert (tmp_path / "tiny" / "confusion_matrix.png").is_file()
    assert (tmp_path / "tiny" / "roc_curves.png").is_file()
    reloaded.load_model()
