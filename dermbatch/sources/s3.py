"""Listing and reading images in an S3 bucket or an S3-compatible store (MinIO, SeaweedFS).

Endpoint, region and credentials come from boto3's usual configuration chain (environment,
~/.aws files, instance roles), except that DERMBATCH_S3_ENDPOINT_URL and
DERMBATCH_S3_ADDRESSING_STYLE take precedence for S3-compatible stores.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from dermbatch.db.store import ImageRef
from dermbatch.errors import ImageReadError, SourceAccessError, SourceNotFoundError
from dermbatch.settings import Settings
from dermbatch.sources.uri import has_image_extension, parse_s3_uri

logger = logging.getLogger(__name__)

#: Seconds to wait for a TCP connection to the S3 endpoint.
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for the next bytes of a response before the request fails.
READ_TIMEOUT_S = 60
#: Attempts botocore makes per request (its "standard" retry mode), before
#: `dermbatch.sources.reader` adds its own retries of reads.
BOTOCORE_MAX_ATTEMPTS = 3
#: Keys per ListObjectsV2 page; 1,000 is the maximum S3 returns.
LIST_PAGE_SIZE = 1000

#: Error codes that a retry may fix: throttling and server-side failures.
TRANSIENT_ERROR_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
     "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
)
#: Error codes that mean the credentials are wrong or lack permission.
ACCESS_ERROR_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "AllAccessDisabled", "403"}
)

_clients: dict[tuple, BaseClient] = {}
_clients_lock = threading.Lock()


def s3_client(settings: Settings) -> BaseClient:
    """Return this process's S3 client for the settings' endpoint.

    Clients are keyed by process id, like database engines, because a connection pool
    must not cross a fork. A client is thread-safe once created, so one serves every
    read thread, and its pool has room for at least `settings.read_threads` connections.
    """
    pool_size = max(10, settings.read_threads + 2)
    key = (os.getpid(), settings.s3_endpoint_url, settings.s3_addressing_style, pool_size)
    client = _clients.get(key)
    if client is not None:
        return client

    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                max_pool_connections=pool_size,
                retries={"mode": "standard", "total_max_attempts": BOTOCORE_MAX_ATTEMPTS},
                s3={"addressing_style": settings.s3_addressing_style},
            )
            # boto3.client() shares a default session, which is not thread-safe to create clients from.
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
            _clients[key] = client
    return client


def dispose_clients() -> None:
    """Drop this process's S3 clients, so that the next call reads credentials and settings again."""
    with _clients_lock:
        _clients.clear()


def list_s3(uri: str, settings: Settings) -> Iterator[ImageRef]:
    """Yield the images under an s3:// prefix, one listing page at a time.

    Keys without an image extension and folder markers (keys ending in "/") are skipped.
    Each ImageRef carries the object's size and its ETag as the content hash. A missing
    bucket raises SourceNotFoundError; wrong credentials or a denied listing raise
    SourceAccessError. An empty prefix yields nothing, and the caller decides whether that
    is an error.
    """
    bucket, prefix = parse_s3_uri(uri)
    paginator = s3_client(settings).get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})

    listed = skipped = 0
    try:
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/") or not has_image_extension(key):
                    skipped += 1
                    continue
                listed += 1
                yield ImageRef(uri=f"s3://{bucket}/{key}", size_bytes=item.get("Size"),
                               content_hash=_strip_etag(item.get("ETag")))
    except ClientError as error:
        raise _listing_error(error, uri) from error
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise SourceAccessError(
            f"no S3 credentials found for listing {uri}; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or another boto3 credential source"
        ) from error
    except BotoCoreError as error:
        raise SourceAccessError(
            f"listing {uri} failed: {error}; check DERMBATCH_S3_ENDPOINT_URL ({settings.s3_endpoint_url or 'AWS'})"
        ) from error
    logger.info("listed %d images under %s, skipped %d other keys", listed, uri, skipped)


def read_object(uri: str, settings: Settings) -> tuple[bytes, str]:
    """Return an object's bytes and ETag, or raise ImageReadError marked transient when a retry may help.

    Throttling, 5xx responses, timeouts and connection failures are transient. A missing
    key, a missing bucket and denied access are not.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        response = s3_client(settings).get_object(Bucket=bucket, Key=key)
        data = response["Body"].read()
    except ClientError as error:
        code = _error_code(error)
        transient = code in TRANSIENT_ERROR_CODES or _status(error) >= 500
        raise ImageReadError(f"reading {uri} failed: {code} ({_error_message(error)})", transient=transient) from error
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise ImageReadError(f"no S3 credentials found for reading {uri}", transient=False) from error
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as error:
        raise ImageReadError(f"reading {uri} failed: {error}", transient=True) from error
    except BotoCoreError as error:
        # Other botocore errors while streaming a body (IncompleteReadError, response
        # stream errors) are network failures too.
        raise ImageReadError(f"reading {uri} failed: {error}", transient=True) from error
    return data, _strip_etag(response.get("ETag")) or ""


def _listing_error(error: ClientError, uri: str) -> Exception:
    code = _error_code(error)
    message = _error_message(error)
    if code in ("NoSuchBucket", "404"):
        return SourceNotFoundError(f"bucket of {uri} not found ({code}); check the bucket name and endpoint")
    if code in ACCESS_ERROR_CODES:
        return SourceAccessError(
            f"access to {uri} denied ({code}: {message}); check the S3 credentials and their permissions"
        )
    return SourceAccessError(f"listing {uri} failed: {code} ({message})")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")) or "no message"


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _strip_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None
