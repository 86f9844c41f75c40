"""Fixtures of the distributed tests: real PostgreSQL, Redis, S3 and Celery workers from tests/services.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services import postgres_url, redis_url, s3_server, worker_factory  # noqa: F401 (fixtures)


@pytest.fixture()
def distributed_env(monkeypatch, postgres_url: str, redis_url: str, s3_server, tiny_bundle_dir: Path,
                    tmp_path: Path) -> dict[str, str]:
    """Environment of a distributed run (PostgreSQL, Redis, S3, the tiny model), applied to this process too.

    Every test starts with an empty queue; the database is shared by the test run, so
    tests count only their own job's rows.
    """
    from dermbatch.db.engine import dispose_engines
    from dermbatch.settings import get_settings
    from services import purge_queues

    purge_queues(redis_url)
    values = {
        "DERMBATCH_DATABASE_URL": postgres_url,
        "DERMBATCH_BROKER_URL": redis_url,
        "DERMBATCH_MODEL_PATH": str(tiny_bundle_dir),
        "DERMBATCH_MODELS_DIR": str(tmp_path / "models"),
        "DERMBATCH_LOG_LEVEL": "INFO",
        "DERMBATCH_RETRY_BACKOFF_S": "0.2",
        **s3_server.env(),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {**os.environ, **values}
    get_settings.cache_clear()
    dispose_engines()
