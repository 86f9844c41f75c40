"""A running worker across model promotions, and beat queueing the scheduled retrain."""

from __future__ import annotations

import json
import signal
import subprocess

import redis

from distributed.jobcheck import job_id_from_output, wait_until
from services import DERMBATCH, run_cli

from dermbatch.db.engine import session_scope
from dermbatch.db.models import Job, ModelVersion


def job_model_version(database_url: str, job_id: int) -> str:
    with session_scope(database_url) as session:
        return session.get(ModelVersion, session.get(Job, job_id).model_version_id).version


def test_worker_uses_promoted_model(distributed_env, full_resolution_folder, worker_factory, tmp_path):
    from tiny_model import build_tiny_bundle

    build_tiny_bundle(tmp_path / "tiny-a", version="tiny-a", seed=1)
    build_tiny_bundle(tmp_path / "tiny-b", version="tiny-b", seed=2)
    folder = tmp_path / "three"
    folder.mkdir()
    for source in sorted(full_resolution_folder.iterdir())[:3]:
        (folder / source.name).symlink_to(source.resolve())
    # A private SQLite database, because promoting changes the active model for every job of a database.
    env = {key: value for key, value in distributed_env.items() if key != "DERMBATCH_MODEL_PATH"}
    env.update(DERMBATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'promote.db'}", DERMBATCH_MODEL_POLL_S="0")
    for args in (["models", "register", str(tmp_path / "tiny-a"), "--activate"],
                 ["models", "register", str(tmp_path / "tiny-b")]):
        completed = run_cli(args, env)
        assert completed.returncode == 0, completed.stderr
    worker = worker_factory.start(env, concurrency=1)
    wait_until(lambda: "loaded model version tiny-a" in worker.log(), 180, "the worker preloads tiny-a")

    before = run_cli(["submit", str(folder), "--wait", "--timeout", "300"], env)
    promoted = run_cli(["models", "promote", "tiny-b"], env)
    after = run_cli(["submit", str(folder), "--wait", "--timeout", "300"], env)

    for completed in (before, promoted, after):
        assert completed.returncode == 0, completed.stderr + worker.log()[-3000:]
    database_url = env["DERMBATCH_DATABASE_URL"]
    assert job_model_version(database_url, job_id_from_output(before.stdout)) == "tiny-a"
    assert job_model_version(database_url, job_id_from_output(after.stdout)) == "tiny-b"
    assert "model version tiny-b" in worker.log()
    assert "is now active" in worker.log()
    assert "batch of 3 images: 3 predicted, 0 reused, 0 errors" in worker.log()


def test_beat_queues_retrain_on_training_queue(distributed_env, tmp_path):
    env = {**distributed_env, "DERMBATCH_RETRAIN_INTERVAL_S": "1"}
    log_path = tmp_path / "beat.log"
    with log_path.open("wb") as log:
        beat = subprocess.Popen([DERMBATCH, "beat", "--schedule-file", str(tmp_path / "schedule")], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    client = redis.Redis.from_url(env["DERMBATCH_BROKER_URL"])
    try:
        wait_until(lambda: client.llen("training") > 0, 120, "beat queues a retrain message")
        message = json.loads(client.lindex("training", -1))
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=30)
        client.close()

    assert message["headers"]["task"] == "dermbatch.retrain"
    assert message["content-type"] == "application/json"
