"""Redaction of URL passwords and presigned-URL credentials in log output."""

from __future__ import annotations

import io
import logging

import pytest

from dermbatch.logredact import MASK, RedactingFilter, install_redaction, redact

PRESIGNED_URL = (
    "https://dermbatch-images.s3.amazonaws.com/clinic-a/ISIC_0024306.jpg"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLEKEYID%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

REDACT_CASES = [
    # (id, text, expected)
    ("redis-password", "connecting to redis://:s3cretPass@redis:6379/0",
     f"connecting to redis://:{MASK}@redis:6379/0"),
    ("postgres-user-password", "postgresql+psycopg://dermbatch:hunter2@postgres:5432/dermbatch",
     f"postgresql+psycopg://dermbatch:{MASK}@postgres:5432/dermbatch"),
    ("password-with-slash", "postgresql://app:ab/cd+ef@db/dermbatch", f"postgresql://app:{MASK}@db/dermbatch"),
    ("token-userinfo", "amqp://tokenvalue@rabbit:5672//", f"amqp://{MASK}@rabbit:5672//"),
    ("url-in-quotes", "error: 'redis://user:pw@host:6379' refused", f"error: 'redis://user:{MASK}@host:6379' refused"),
    ("two-urls", "redis://:a@r/0 and postgresql://u:b@p/d", f"redis://:{MASK}@r/0 and postgresql://u:{MASK}@p/d"),
    ("no-credentials", "redis://redis:6379/0", "redis://redis:6379/0"),
    ("s3-uri-unchanged", "s3://dermbatch-images/clinic-a/ISIC_0024306.jpg",
     "s3://dermbatch-images/clinic-a/ISIC_0024306.jpg"),
    ("empty-password-unchanged", "redis://user:@host/0", "redis://user:@host/0"),
    ("sigv2-parameters", "https://b.s3.amazonaws.com/k.jpg?AWSAccessKeyId=AKIAEXAMPLE&Expires=1&Signature=abc%2Bdef",
     f"https://b.s3.amazonaws.com/k.jpg?AWSAccessKeyId={MASK}&Expires=1&Signature={MASK}"),
    ("security-token", "?X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Date=1",
     f"?X-Amz-Security-Token={MASK}&X-Amz-Date=1"),
]


@pytest.mark.parametrize("text,expected", [case[1:] for case in REDACT_CASES],
                         ids=[case[0] for case in REDACT_CASES])
def test_redact_cases(text, expected):
    assert redact(text) == expected


def test_redact_presigned_url_keeps_the_object_key():
    redacted = redact(f"GET {PRESIGNED_URL} returned 403")

    assert "AKIAEXAMPLEKEYID" not in redacted
    assert "0123456789abcdef" not in redacted
    assert f"X-Amz-Credential={MASK}&" in redacted
    assert f"X-Amz-Signature={MASK} returned 403" in redacted
    assert "clinic-a/ISIC_0024306.jpg" in redacted
    assert "X-Amz-Expires=3600" in redacted


@pytest.fixture()
def captured_logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    parent = logging.getLogger("dermbatch-redaction-test")
    parent.handlers = [handler]
    parent.propagate = False
    parent.setLevel(logging.DEBUG)
    install_redaction(parent)
    yield parent, stream
    parent.handlers = []


def test_filter_redacts_arguments_of_child_loggers(captured_logger):
    parent, stream = captured_logger

    parent.getChild("worker").info("broker %s, database %s", "redis://:brokerpw@redis:6379/0",
                                   "postgresql://dermbatch:dbpw@postgres/dermbatch")

    output = stream.getvalue()
    assert "brokerpw" not in output
    assert "dbpw" not in output
    assert f"redis://:{MASK}@redis:6379/0" in output
    assert f"postgresql://dermbatch:{MASK}@postgres/dermbatch" in output


def test_filter_redacts_traceback(captured_logger):
    parent, stream = captured_logger

    try:
        raise ConnectionError(f"could not fetch {PRESIGNED_URL}")
    except ConnectionError:
        parent.exception("read failed for job %d", 7)

    output = stream.getvalue()
    assert "read failed for job 7" in output
    assert "ConnectionError" in output
    assert "0123456789abcdef" not in output
    assert "AKIAEXAMPLEKEYID" not in output


def test_install_redaction_adds_one_filter_per_handler(captured_logger):
    parent, _ = captured_logger

    install_redaction(parent)

    filters = [f for f in parent.handlers[0].filters if isinstance(f, RedactingFilter)]
    assert len(filters) == 1
