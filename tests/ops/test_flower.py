"""Flower in a real browser: a worker and Flower on 127.0.0.1 run a small job, and headless
Chromium loads the dashboard and the tasks page.

The screenshots are kept in test-artifacts/ at the repository root.
"""

from __future__ import annotations

import html
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ops.browser import CHROMIUM, FlowerProcess, dump_dom, screenshot, start_flower
from services import REPO_ROOT, WorkerFactory, WorkerProcess, free_port, run_cli

pytestmark = pytest.mark.slow

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
IMAGE_COUNT = 12
BATCH_SIZE = 4
BATCH_COUNT = IMAGE_COUNT // BATCH_SIZE
CLASSIFY_TASK = "dermbatch.classify_batch"
#: Seconds for the job to finish and for Flower to receive every task event, on a loaded 2-core machine.
JOB_TIMEOUT_S = 600


@dataclass
class FlowerJob:
    """A finished job and the processes that ran and watched it."""

    flower: FlowerProcess
    worker: WorkerProcess
    job_id: int
    #: Flower's /api/tasks entries of the job's batch tasks, by task id.
    tasks: dict
    profile_dir: Path
    metrics_port: int


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for index in range(count):
        pixels = (rng.random((90, 120, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"lesion_{index:03d}.jpg", quality=90)
    return folder


def wait_for_successful_tasks(flower: FlowerProcess, expected: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    tasks: dict = {}
    while time.monotonic() < deadline:
        tasks = {uuid: task for uuid, task in flower.get_json("/api/tasks").items() if task["name"] == CLASSIFY_TASK}
        if sum(task["state"] == "SUCCESS" for task in tasks.values()) >= expected:
            return tasks
        time.sleep(1)
    states = {uuid: task["state"] for uuid, task in tasks.items()}
    raise AssertionError(f"expected {expected} {CLASSIFY_TASK} tasks in SUCCESS within {timeout_s} s, "
                         f"Flower has {states}:\n{flower.log()[-3000:]}")


def visible_text(dom: str) -> str:
    """Return the page's text without tags, scripts and styles, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL | re.IGNORECASE)
    # Flower splits a worker's name into two spans; inline tags join their text without a space.
    dom = re.sub(r"</?(?:span|a|wbr|b|strong|em|small|mark|code)\b[^>]*>", "", dom, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium not found at {CHROMIUM}; install Debian's chromium package")
    return CHROMIUM


@pytest.fixture(scope="module")
def flower_job(tmp_path_factory, chromium, postgres_url, redis_url, tiny_bundle_dir):
    """A finished job of BATCH_COUNT batches, run by one worker while Flower watched; shared by this module."""
    tmp_path = tmp_path_factory.mktemp("flower-job")
    worker_factory = WorkerFactory(tmp_path)
    env = {
        **os.environ,
        "DERMBATCH_DATABASE_URL": postgres_url,
        "DERMBATCH_BROKER_URL": redis_url,
        "DERMBATCH_MODEL_PATH": str(tiny_bundle_dir),
        "DERMBATCH_MODELS_DIR": str(tmp_path / "models"),
        "DERMBATCH_DEVICE": "cpu",
        "DERMBATCH_LOG_LEVEL": "INFO",
        "DERMBATCH_METRICS_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flower = start_flower(env, run_dir, user="operator", password="flower-test-password")
    try:
        worker = worker_factory.start(env, concurrency=1, queues="inference")
        folder = write_images(tmp_path / "images", IMAGE_COUNT)

        submitted = run_cli(["submit", str(folder), "--batch-size", str(BATCH_SIZE), "--wait", "--timeout",
                             str(JOB_TIMEOUT_S)], env, timeout_s=JOB_TIMEOUT_S + 60, cwd=run_dir)
        assert submitted.returncode == 0, f"{submitted.stdout}\n{submitted.stderr}\n{worker.log()[-3000:]}"
        job_id = int(submitted.stdout.split()[0])

        tasks = wait_for_successful_tasks(flower, BATCH_COUNT, JOB_TIMEOUT_S)
        yield FlowerJob(flower=flower, worker=worker, job_id=job_id, tasks=tasks,
                        profile_dir=tmp_path / "chromium-profile", metrics_port=int(env["DERMBATCH_METRICS_PORT"]))
    finally:
        worker_factory.stop_all()
        flower.stop()


def test_flower_pages_in_chromium(flower_job):
    flower, worker, job_id, profile_dir = flower_job.flower, flower_job.worker, flower_job.job_id, flower_job.profile_dir
    worker_name = re.search(r"test\d+-[0-9a-f]+@\S+", worker.log()).group(0).split(" ")[0].rstrip(":")

    dashboard = visible_text(dump_dom(f"{flower.url_with_credentials}/", profile_dir))
    screenshot(f"{flower.url_with_credentials}/", ARTIFACTS_DIR / "flower-dashboard.png", profile_dir)
    tasks_page = visible_text(dump_dom(f"{flower.url_with_credentials}/tasks", profile_dir))
    screenshot(f"{flower.url_with_credentials}/tasks", ARTIFACTS_DIR / "flower-tasks.png", profile_dir)
    (ARTIFACTS_DIR / "flower-dashboard.txt").write_text(dashboard)
    (ARTIFACTS_DIR / "flower-tasks.txt").write_text(tasks_page)

    assert worker_name in dashboard
    assert re.search(rf"{re.escape(worker_name)}\s+Online", dashboard), dashboard[:2000]
    assert tasks_page.count(CLASSIFY_TASK) >= BATCH_COUNT
    assert tasks_page.count("SUCCESS") >= BATCH_COUNT
    for batch in range(1, BATCH_COUNT + 1):
        assert f"job={job_id} batch={batch} images={BATCH_SIZE} model=tiny-test" in tasks_page
    assert all(task["worker"] == worker_name for task in flower_job.tasks.values())


def test_flower_metrics_and_auth(flower_job):
    flower = flower_job.flower
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    with opener.open(f"{flower.url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    with pytest.raises(urllib.error.HTTPError) as rejected:
        opener.open(f"{flower.url}/api/tasks", timeout=30)

    succeeded = re.findall(r'^flower_events_total\{[^}]*task="dermbatch.classify_batch"[^}]*type="task-succeeded"'
                           r'[^}]*\} (\S+)$', metrics, flags=re.MULTILINE)
    assert sum(float(value) for value in succeeded) >= BATCH_COUNT, metrics[:3000]
    assert "flower_worker_online" in metrics
    assert rejected.value.code == 401


def test_worker_metrics_after_job(flower_job):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    with opener.open(f"http://127.0.0.1:{flower_job.metrics_port}/metrics", timeout=30) as response:
        metrics = response.read().decode()

    assert f'dermbatch_images_classified_total{{model_version="tiny-test"}} {float(IMAGE_COUNT)}' in metrics, metrics[:3000]
    assert f'dermbatch_batch_duration_seconds_count{{model_version="tiny-test"}} {float(BATCH_COUNT)}' in metrics
    assert 'dermbatch_queue_depth{queue="inference"} 0.0' in metrics
    assert re.search(rf"job {flower_job.job_id} batch of {BATCH_SIZE} images: {BATCH_SIZE} predicted",
                     flower_job.worker.log())
