"""`dermbatch classify` and `dermbatch results` end to end on the embedded default."""

from __future__ import annotations

import json
import sqlite3

import pytest

from core.cli import results_rows, run_cli
from core.image_catalogue import CLASSIFIED, write_catalogue

LABELS = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def count_predictions(sqlite_url: str) -> int:
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        return connection.execute("SELECT count(*) FROM predictions").fetchone()[0]


def test_classify_real_images_gives_one_row_each(full_resolution_folder, embedded_env, tmp_path):
    completed = run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)
    assert completed.returncode == 0, completed.stderr

    rows = results_rows("latest", embedded_env, tmp_path)

    assert len(rows) == 245
    assert {row["status"] for row in rows} == {"done"}
    assert {row["model_version"] for row in rows} == {"tiny-test"}
    for row in rows:
        total = sum(float(row[f"p_{label}"]) for label in LABELS)
        assert abs(total - 1.0) < 1e-4, f"{row['uri']} probabilities sum to {total}"
        assert row["label"] in LABELS
        assert float(row["confidence"]) == max(float(row[f"p_{label}"]) for label in LABELS)


def test_classify_again_adds_no_predictions(full_resolution_folder, embedded_env, sqlite_url, tmp_path):
    first = run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)
    assert first.returncode == 0, first.stderr
    predictions_after_first = count_predictions(sqlite_url)

    second = run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)
    assert second.returncode == 0, second.stderr

    assert predictions_after_first == 245
    assert count_predictions(sqlite_url) == 245
    rows = results_rows("2", embedded_env, tmp_path)
    assert len(rows) == 245
    assert {row["status"] for row in rows} == {"done"}


def test_classify_force_replaces_without_duplicates(full_resolution_folder, embedded_env, sqlite_url, tmp_path):
    run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)

    forced = run_cli(["classify", str(full_resolution_folder), "--force"], embedded_env, tmp_path)

    assert forced.returncode == 0, forced.stderr
    assert count_predictions(sqlite_url) == 245


def test_classify_mixed_folder_records_each_bad_file(embedded_env, tmp_path):
    folder = tmp_path / "mixed"
    cases = write_catalogue(folder)

    completed = run_cli(["classify", str(folder), "--batch-size", "5"], embedded_env, tmp_path)
    assert completed.returncode == 0, completed.stderr
    rows = {row["uri"]: row for row in results_rows("latest", embedded_env, tmp_path)}

    assert set(rows) == set(cases), "README.txt must not be listed and every case must be"
    for uri, case in cases.items():
        row = rows[uri]
        assert row["status"] == case.status, f"{case.name}: {row}"
        if case.status == CLASSIFIED:
            assert row["label"] in LABELS, case.name
        else:
            assert row["error_reason"] == case.reason, f"{case.name}: {row['error_message']}"
            assert row["error_message"], case.name


def test_classify_missing_folder_fails_clearly(embedded_env, tmp_path):
    completed = run_cli(["classify", str(tmp_path / "nowhere")], embedded_env, tmp_path)

    assert completed.returncode != 0
    assert "does not exist" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_classify_folder_without_images_fails_clearly(embedded_env, tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")

    completed = run_cli(["classify", str(folder)], embedded_env, tmp_path)

    assert completed.returncode != 0
    assert "no JPEG or PNG images" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_results_filters_by_class_probability(full_resolution_folder, embedded_env, tmp_path):
    run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)
    rows = results_rows("latest", embedded_env, tmp_path)
    threshold = sorted(float(row["p_mel"]) for row in rows)[len(rows) // 2]

    completed = run_cli(["results", "latest", "--format", "json", "--min-prob", f"mel={threshold}"],
                        embedded_env, tmp_path)

    assert completed.returncode == 0, completed.stderr
    filtered = json.loads(completed.stdout)
    expected = {row["uri"] for row in rows if float(row["p_mel"]) >= threshold}
    assert {row["uri"] for row in filtered} == expected
    assert 0 < len(filtered) < len(rows)


def test_results_rejects_unknown_class_in_filter(full_resolution_folder, embedded_env, tmp_path):
    run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)

    completed = run_cli(["results", "latest", "--label", "mel' OR '1'='1"], embedded_env, tmp_path)

    assert completed.returncode != 0
    assert "unknown class" in completed.stderr


@pytest.mark.parametrize("job", ["999", "abc"])
def test_results_unknown_job_fails_clearly(embedded_env, tmp_path, job):
    run_cli(["db", "upgrade"], embedded_env, tmp_path)

    completed = run_cli(["results", job], embedded_env, tmp_path)

    assert completed.returncode != 0
    assert "job" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("command", [["jobs"], ["status", "latest"], ["results", "latest"]])
def test_read_commands_without_database_fail_clearly(embedded_env, sqlite_url, tmp_path, command):
    completed = run_cli(command, embedded_env, tmp_path)

    assert completed.returncode == 2
    assert "does not exist" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "dermbatch.db").exists(), "a read command must not create the database"


def test_results_output_file_needs_csv_or_json(full_resolution_folder, embedded_env, tmp_path):
    run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)

    completed = run_cli(["results", "latest", "--output", str(tmp_path / "out.txt")], embedded_env, tmp_path)

    assert completed.returncode != 0
    assert "--format csv" in completed.stderr
    assert not (tmp_path / "out.txt").exists()


def test_classify_again_reports_reused_predictions(full_resolution_folder, embedded_env, tmp_path):
    run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)

    second = run_cli(["classify", str(full_resolution_folder)], embedded_env, tmp_path)

    assert second.returncode == 0, second.stderr
    assert "0 classified, 245 reused" in second.stdout
