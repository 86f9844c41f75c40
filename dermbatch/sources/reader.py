"""Reading one image by URI, with bounded retries of transient failures."""

from __future__ import annotations

import logging
import time

from dermbatch.errors import ImageReadError
from dermbatch.settings import Settings
from dermbatch.sources.folder import read_file
from dermbatch.sources.uri import is_s3_uri

logger = logging.getLogger(__name__)


def read_image(uri: str, settings: Settings) -> tuple[bytes, str]:
    """Return an image's bytes and content hash (the S3 ETag, or the file's sha256).

    Transient failures are retried `settings.read_retries` times with exponential backoff
    starting at `settings.retry_backoff_s`; the last one is raised.
    """
    delay = settings.retry_backoff_s
    for attempt in range(settings.read_retries + 1):
        try:
            return _read_once(uri, settings)
        except ImageReadError as error:
            if not error.transient or attempt == settings.read_retries:
                raise
            logger.warning("read of %s failed (%s); retry %d of %d in %.1f s",
                           uri, error, attempt + 1, settings.read_retries, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _read_once(uri: str, settings: Settings) -> tuple[bytes, str]:
    if is_s3_uri(uri):
        from dermbatch.sources.s3 import read_object

        return read_object(uri, settings)
    return read_file(uri)
