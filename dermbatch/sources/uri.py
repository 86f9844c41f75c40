"""Image URIs: `s3://bucket/key` for objects, an absolute path for files."""

from __future__ import annotations

from dermbatch.errors import SourceNotFoundError

#: File name extensions listed as images; other formats among them are recorded as errors.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
)


def is_s3_uri(source: str) -> bool:
    return source.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key/or/prefix` into (bucket, key); the key may be empty."""
    if not is_s3_uri(uri):
        raise SourceNotFoundError(f"{uri!r} is not an s3:// URI")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise SourceNotFoundError(f"{uri!r} names no bucket; expected s3://BUCKET/PREFIX/")
    return bucket, key


def has_image_extension(name: str) -> bool:
    dot = name.rfind(".")
    return dot != -1 and name[dot:].lower() in IMAGE_EXTENSIONS
