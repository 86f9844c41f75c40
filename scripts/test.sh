#!/usr/bin/env bash
# Set up dermbatch with its test dependencies and run the test suite: the fast tests first,
# then the slow fault-injection and browser tests as their own step.
# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth); the tests
# start their own S3 server (SeaweedFS) and Celery workers.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=test bash scripts/setup.sh
.venv/bin/python -m pytest -m "not slow" "$@"
.venv/bin/python -m pytest -m slow "$@" || [ $? -eq 5 ]  # exit 5: no slow tests selected
