"""`dermbatch labels import`, `data link-full-resolution` and `evaluate` as a user runs them."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dermbatch.cli import app
from dermbatch.db.engine import session_scope
from dermbatch.db.models import Label

runner = CliRunner()


@pytest.fixture()
def database(monkeypatch, sqlite_url, tmp_path):
    from dermbatch.settings import get_settings

    monkeypatch.setenv("DERMBATCH_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DERMBATCH_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    yield sqlite_url
    get_settings.cache_clear()


def test_labels_import_partial_rejection(database, tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "image,diagnosis,source\n"
        "s3://clinic/a.jpg,mel,pathology 2026-01\n"
        "s3://clinic/b.jpg,melanoma,pathology 2026-01\n"
        "ISIC_0024306,NV,follow-up\n"
        ",bcc,pathology\n"
        "s3://clinic/c.jpg,bkl,\n"
    )

    result = runner.invoke(app, ["labels", "import", str(csv_file)])

    assert result.exit_code == 1
    assert "imported 2 labels" in result.output
    assert "line 3: invalid diagnosis 'melanoma'" in result.output
    assert "line 5: the image column is empty" in result.output
    assert "line 6: the source is empty" in result.output
    with session_scope(database) as session:
        rows = [(label.image_ref, label.diagnosis, label.source) for label in session.scalars(select(Label))]
    assert rows == [("s3://clinic/a.jpg", "mel", "pathology 2026-01"), ("ISIC_0024306", "nv", "follow-up")]


def test_labels_import_uses_default_source(database, tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("image_id,dx\nISIC_0024306,df\n")

    result = runner.invoke(app, ["labels", "import", str(csv_file), "--source", "registry export"])

    assert result.exit_code == 0, result.output
    with session_scope(database) as session:
        assert session.scalar(select(Label.source)) == "registry export"


def test_labels_import_rejects_file_without_diagnosis_column(database, tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("image,source\na.jpg,x\n")

    result = runner.invoke(app, ["labels", "import", str(csv_file)])

    assert result.exit_code != 0
    assert "diagnosis column" in str(result.exception) or "diagnosis column" in result.output


def test_link_full_resolution_links_245_images(ham10000_dir, tmp_path):
    dest = tmp_path / "full"

    first = runner.invoke(app, ["data", "link-full-resolution", str(ham10000_dir), str(dest)])
    again = runner.invoke(app, ["data", "link-full-resolution", str(ham10000_dir), str(dest)])

    links = sorted(dest.iterdir())
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert len(links) == 245
    assert all(link.is_symlink() and link.resolve().is_file() for link in links)
    assert "0 links created" in again.output


def test_evaluate_writes_metrics_and_plots(tiny_bundle_dir, synthetic_dir, synthetic_split, tmp_path, monkeypatch):
    monkeypatch.setattr("dermbatch.training.data.DEFAULT_CACHE_DIR", tmp_path / "cache")
    out = tmp_path / "evaluation"

    result = runner.invoke(app, ["evaluate", str(tiny_bundle_dir), str(synthetic_dir), "--split-file",
                                 str(synthetic_split), "--out", str(out)])

    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["n_images"] > 0
    assert {"accuracy", "balanced_accuracy", "macro_auc", "ece", "per_class", "melanoma"} <= metrics.keys()
    assert (out / "confusion_matrix.png").is_file()
    assert (out / "roc_curves.png").is_file()


def test_evaluate_job_scores_classified_images(embedded_env, synthetic_dir, tmp_path):
    classified = runner.invoke(app, ["classify", str(synthetic_dir / "images")])
    assert classified.exit_code == 0, classified.output
    out = tmp_path / "job-scores"

    result = runner.invoke(app, ["evaluate-job", "latest", str(synthetic_dir / "HAM10000_metadata.csv"),
                                 "--out", str(out)])

    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 7 * 27
    assert metrics["unmatched"] == 0
    assert metrics["errors"] == 0
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0


def test_evaluate_job_split_keeps_one_side(embedded_env, synthetic_dir, synthetic_split, tmp_path):
    from dermbatch.training.split import read_split

    classified = runner.invoke(app, ["classify", str(synthetic_dir / "images")])
    assert classified.exit_code == 0, classified.output
    out = tmp_path / "job-scores"

    result = runner.invoke(app, ["evaluate-job", "latest", str(synthetic_dir / "HAM10000_metadata.csv"),
                                 "--split", "test", "--split-file", str(synthetic_split), "--out", str(out)])

    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    test_images = sum(1 for row in read_split(synthetic_split) if row.split == "test")
    assert metrics["n_images"] == test_images
    assert metrics["unmatched"] == 7 * 27 - test_images
