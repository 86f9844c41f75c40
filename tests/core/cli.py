"""Running the `dermbatch` console script as a user does, in a subprocess."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

DERMBATCH = [sys.executable, "-m", "dermbatch"]


def run_cli(args: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(DERMBATCH + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def results_rows(job: str, env: dict[str, str], cwd: Path) -> list[dict[str, str]]:
    completed = run_cli(["results", job, "--format", "csv"], env, cwd)
    assert completed.returncode == 0, completed.stderr
    return list(csv.DictReader(io.StringIO(completed.stdout)))
