"""`dermbatch resume` finishes an embedded job whose process was killed."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

from core.cli import DERMBATCH, results_rows, run_cli


def done_images(sqlite_url: str) -> int:
    try:
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30) as connection:
            return connection.execute("SELECT count(*) FROM images WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_resume_after_sigkill_finishes_without_duplicates(full_resolution_folder, embedded_env, sqlite_url,
                                                          tmp_path):
    process = subprocess.Popen(DERMBATCH + ["classify", str(full_resolution_folder), "--batch-size", "4"],
                               env=embedded_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while done_images(sqlite_url) < 20 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = done_images(sqlite_url)
    assert 0 < killed_at < 245, f"the kill must land mid-job, {killed_at} images were done"

    resumed = run_cli(["resume", "latest"], embedded_env, tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    rows = results_rows("latest", embedded_env, tmp_path)
    assert len(rows) == 245
    assert {row["status"] for row in rows} == {"done"}
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        predictions = connection.execute("SELECT count(*) FROM predictions").fetchone()[0]
        status = connection.execute("SELECT status FROM jobs").fetchone()[0]
    assert predictions == 245
    assert status == "done"
