"""Scoring a finished classify job against known diagnoses, such as HAM10000_metadata.csv."""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from dermbatch.db.queries import get_job, iter_results, job_labels
from dermbatch.errors import DermbatchError
from dermbatch.training.evaluate import evaluate_arrays


def read_diagnoses(path: Path) -> dict[str, str]:
    """Read image_id -> dx from a CSV with `image_id` and `dx` (or `diagnosis`) columns."""
    with Path(path).open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        diagnosis_column = next((name for name in ("dx", "diagnosis") if name in columns), None)
        if "image_id" not in columns or diagnosis_column is None:
            raise DermbatchError(f"{path} needs image_id and dx (or diagnosis) columns; found {', '.join(columns)}")
        return {row["image_id"]: row[diagnosis_column] for row in reader}


def score_job(session: Session, job_ref: str | int, diagnoses: dict[str, str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Score a job's predictions against diagnoses keyed by image file name without its suffix.

    Returns (metrics, true class indices, probabilities, labels). Images without a known
    diagnosis and images that failed to classify are counted in the metrics' `unmatched` and
    `errors` fields and left out of the scores.
    """
    job = get_job(session, job_ref)
    labels = tuple(job_labels(session, job))
    position = {label: index for index, label in enumerate(labels)}
    truths, probabilities = [], []
    unmatched = errors = 0
    for row in iter_results(session, job):
        image_id = PurePosixPath(row["uri"]).stem
        if image_id not in diagnoses or diagnoses[image_id] not in position:
            unmatched += 1
            continue
        if row["status"] != "done":
            errors += 1
            continue
        truths.append(position[diagnoses[image_id]])
        probabilities.append([row[f"p_{label}"] for label in labels])

    if not truths:
        raise DermbatchError(f"no image of job {job.id} has a diagnosis in the file; file names must be image ids")
    truth_array = np.array(truths)
    probability_array = np.array(probabilities, dtype=np.float64)
    metrics = evaluate_arrays(truth_array, probability_array, labels)
    metrics.update(split=f"job {job.id}", job_id=job.id, unmatched=unmatched, errors=errors)
    return metrics, truth_array, probability_array, labels
