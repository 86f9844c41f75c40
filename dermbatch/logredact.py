"""Removal of credentials from log output: passwords in URLs and presigned-URL signatures.

Broker and database URLs carry passwords (`redis://:PASSWORD@host`,
`postgresql://user:PASSWORD@host`), and S3 errors can quote presigned URLs whose query
strings hold an access key id and a signature. `RedactingFilter` rewrites each record's
message and traceback before any handler formats it.
"""

from __future__ import annotations

import logging
import re

#: Text that replaces a removed secret.
MASK = "***"

# scheme://user:password@ — the password may contain "/", because SQLAlchemy accepts it
# unencoded. It cannot contain "@" or whitespace, so the match ends at the last "@" of the URL.
_URL_PASSWORD = re.compile(
    r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://(?P<user>[^\s:/?#@\[\]]*)):(?P<password>[^\s@]*)@"
)
# scheme://token@ — userinfo without a colon is a token (GitHub, some brokers).
_URL_TOKEN = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<token>[^\s:/?#@\[\]]+)@")
# Query parameters of AWS presigned URLs (signature versions 4 and 2) that grant access.
_PRESIGNED_PARAMETER = re.compile(
    r"(?P<name>\b(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=)"
    r"(?P<value>[^&\s\"'#<>]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Return `text` with URL passwords, URL tokens and presigned-URL credentials replaced by MASK."""
    text = _URL_PASSWORD.sub(lambda match: f"{match['prefix']}:{MASK}@" if match["password"] else match[0], text)
    text = _URL_TOKEN.sub(lambda match: f"{match['prefix']}{MASK}@", text)
    return _PRESIGNED_PARAMETER.sub(lambda match: f"{match['name']}{MASK}", text)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message, traceback and stack before formatting.

    The record's arguments are merged into its message, so later filters and handlers see
    only the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None

        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add a RedactingFilter to every handler of `logger` (the root logger by default) that lacks one.

    Call after logging is configured, such as from Celery's `after_setup_logger` and
    `after_setup_task_logger` signals, because a filter on a handler also covers records
    that child loggers propagate to it, where a filter on a logger would not.
    """
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
