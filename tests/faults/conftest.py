"""Private Redis and PostgreSQL servers that fault tests may stop and restart.

The machine's shared servers stay untouched: each fault test gets its own server process
on a free 127.0.0.1 port, in a temporary folder, stopped by process id at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services import (  # noqa: F401 (fixtures)
    START_TIMEOUT_S,
    free_port,
    postgres_url,
    redis_url,
    s3_server,
    wait_for_port,
    worker_factory,
)

REDIS_SERVER = shutil.which("redis-server")
PG_BIN = Path(os.environ.get("DERMBATCH_TEST_PG_BIN", "")) if os.environ.get("DERMBATCH_TEST_PG_BIN") else None


@dataclass
class PrivateRedis:
    """A redis-server with an append-only file, so that a restart keeps queued and unacknowledged messages."""

    folder: Path
    port: int
    password: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                   "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for_port(self.port, START_TIMEOUT_S):
            raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster run by the `postgres` user in a temporary folder."""

    folder: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=300)

    def init(self) -> None:
        self._as_postgres(str(self.bin_dir / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U",
                          "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-o", options, "-l",
                          str(self.folder / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


def postgres_bin_dir() -> Path | None:
    if PG_BIN is not None:
        return PG_BIN
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return candidates[0] if candidates else None


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server not found; install Debian's redis-server package")
    server = PrivateRedis(folder=tmp_path, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture()
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries under /usr/lib/postgresql or runuser not found")
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        pytest.skip("no `postgres` system user to run a private PostgreSQL cluster")
    folder = Path(tempfile.mkdtemp(prefix="dermbatch-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(folder=folder, port=free_port(), bin_dir=bin_dir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        from dermbatch.db.engine import dispose_engines

        dispose_engines()
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def fault_env(tiny_bundle_dir: Path, tmp_path: Path, redis_url: str) -> dict[str, str]:
    """Settings shared by fault tests; each test adds its database and broker URLs."""
    from services import purge_queues

    purge_queues(redis_url)
    return {
        **os.environ,
        "DERMBATCH_MODEL_PATH": str(tiny_bundle_dir),
        "DERMBATCH_MODELS_DIR": str(tmp_path / "models"),
        "DERMBATCH_LOG_LEVEL": "INFO",
        "DERMBATCH_RETRY_BACKOFF_S": "1",
        "DERMBATCH_TASK_MAX_ATTEMPTS": "6",
        "DERMBATCH_VISIBILITY_TIMEOUT_S": "60",
        "DERMBATCH_MODEL_POLL_S": "1",
    }


def wait_for(condition, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {message}")
        time.sleep(0.1)
