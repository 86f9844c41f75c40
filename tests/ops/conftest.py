"""Fixtures of the operations tests: the real Redis, PostgreSQL and worker fixtures of tests/services.py."""

from services import postgres_url, redis_url, worker_factory  # noqa: F401
