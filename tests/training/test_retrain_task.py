"""The scheduled retrain as beat sends it: a real worker on the `training` queue runs the Celery task."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time

import pytest
from sqlalchemy import select

from dermbatch.db.engine import session_scope
from dermbatch.db.models import TrainingRun
from dermbatch.settings import Settings
from dermbatch.training.split import read_split
from services import postgres_url, redis_url, run_cli, worker_factory  # noqa: F401 (fixtures)
from training.test_retrain import TINY_CONFIG, _register_baseline

pytestmark = pytest.mark.slow


def send_retrain(broker_url: str) -> None:
    """Publish the retrain task by name on the training queue, as `dermbatch beat` does on schedule."""
    from celery import Celery

    from dermbatch.worker.celery_app import RETRAIN_TASK, TRAINING_QUEUE

    app = Celery("beat-like", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    app.send_task(RETRAIN_TASK, queue=TRAINING_QUEUE)


def wait_for_runs(database_url: str, count: int, timeout_s: float, worker) -> list[TrainingRun]:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(database_url) as session:
            runs = list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))
            if len(runs) >= count and runs[-1].finished_at is not None:
                return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(runs)} training runs after {timeout_s} s:\n{worker.log()[-4000:]}")
        time.sleep(0.5)


def test_retrain_task_skips_then_decides(tmp_path, postgres_url, redis_url, synthetic_dir, synthetic_split,
                                         tiny_bundle_dir, worker_factory):
    from services import purge_queues

    purge_queues(redis_url)
    config_file = tmp_path / "retrain.json"
    options = {key: value for key, value in dataclasses.asdict(TINY_CONFIG).items() if key != "weights_dir"}
    config_file.write_text(json.dumps(options))
    env_values = {
        "DERMBATCH_DATABASE_URL": postgres_url, "DERMBATCH_BROKER_URL": redis_url,
        "DERMBATCH_DATA_DIR": str(synthetic_dir), "DERMBATCH_SPLIT_FILE": str(synthetic_split),
        "DERMBATCH_RETRAIN_CONFIG": str(config_file), "DERMBATCH_MODELS_DIR": str(tmp_path / "models"),
        "DERMBATCH_LOG_LEVEL": "INFO",
    }
    baseline = tmp_path / "baseline"
    shutil.copytree(tiny_bundle_dir, baseline)
    _register_baseline(Settings(database_url=postgres_url), baseline, balanced_accuracy=0.0, mel_recall=0.0,
                       split_file=synthetic_split)
    env = {**os.environ, **env_values}
    worker = worker_factory.start(env, concurrency=1, queues="training")

    send_retrain(redis_url)
    first = wait_for_runs(postgres_url, 1, 300, worker)[-1]

    train_ids = [row for row in read_split(synthetic_split) if row.split == "train"][:4]
    labels_csv = tmp_path / "labels.csv"
    with labels_csv.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "diagnosis", "source"])
        for row in train_ids:
            writer.writerow([str(synthetic_dir / "images" / f"{row.image_id}.jpg"), row.dx, "pathology"])
    imported = run_cli(["labels", "import", str(labels_csv)], env)
    assert imported.returncode == 0, imported.stderr
    send_retrain(redis_url)
    second = wait_for_runs(postgres_url, 2, 600, worker)[-1]

    assert first.status == "skipped"
    assert "0 new labels" in first.reason
    assert first.candidate_version_id is None
    assert second.status in ("promoted", "rejected"), second.reason
    assert second.candidate_version_id is not None
    assert second.new_labels == 4
    assert "balanced accuracy" in second.reason
