"""A Flower process and a headless Chromium for the browser tests, both on 127.0.0.1 only."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services import START_TIMEOUT_S, VENV_BIN, free_port

#: Debian's chromium package installs the browser here.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Milliseconds of page time Chromium lets scripts and XHRs run before it dumps or captures;
#: Flower's tasks table fills in through an XHR after the page loads.
VIRTUAL_TIME_BUDGET_MS = 5000
#: Seconds one Chromium run may take on a loaded machine.
CHROMIUM_TIMEOUT_S = 180
#: Columns of Flower's tasks table, the same as FLOWER_TASKS_COLUMNS in docker-compose.yml.
TASKS_COLUMNS = "name,state,args,received,runtime,worker"


@dataclass
class FlowerProcess:
    """`celery flower` with basic authentication, listening on 127.0.0.1."""

    process: subprocess.Popen
    port: int
    user: str
    password: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str):
        """Return the decoded JSON of a GET on Flower's API, sent with basic authentication."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Basic {token}"})
        # An empty proxy table, so that no 127.0.0.1 request goes to a proxy named in the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_until_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited with status {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with opener.open(f"{self.url}/healthcheck", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"flower did not respond to /healthcheck within {timeout_s} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)


def start_flower(env: dict[str, str], log_dir: Path, user: str, password: str) -> FlowerProcess:
    """Start Flower for the dermbatch Celery app on a free 127.0.0.1 port and wait until /healthcheck responds."""
    port = free_port()
    log_path = log_dir / "flower.log"
    command = [
        str(VENV_BIN / "celery"), "--app", "dermbatch.worker.celery_app", "flower",
        "--address=127.0.0.1", f"--port={port}", f"--basic-auth={user}:{password}",
        f"--tasks-columns={TASKS_COLUMNS}", f"--db={log_dir / 'flower-state'}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir,
                                   start_new_session=True)
    flower = FlowerProcess(process=process, port=port, user=user, password=password, log_path=log_path)
    try:
        flower.wait_until_ready()
    except RuntimeError:
        flower.stop()
        raise
    return flower


def chromium_args(profile_dir: Path) -> list[str]:
    """Return the flags of a headless Chromium without its background traffic (updates, sync, QUIC, proxies)."""
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--no-proxy-server", f"--user-data-dir={profile_dir}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
    ]


def dump_dom(url: str, profile_dir: Path) -> str:
    """Return the DOM of a page after its scripts have run, as Chromium serialises it."""
    completed = subprocess.run([*chromium_args(profile_dir), "--dump-dom", url], capture_output=True, text=True,
                               timeout=CHROMIUM_TIMEOUT_S)
    if completed.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom exited with status {completed.returncode}:\n{completed.stderr[-4000:]}")
    return completed.stdout


def screenshot(url: str, path: Path, profile_dir: Path, window_size: str = "1400,900") -> Path:
    """Save a PNG of a page after its scripts have run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [*chromium_args(profile_dir), f"--screenshot={path}", f"--window-size={window_size}", url],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
    )
    if completed.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot exited with status {completed.returncode}:\n"
                           f"{completed.stderr[-4000:]}")
    return path
