"""Listing and reading images in a local folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from dermbatch.db.store import ImageRef
from dermbatch.errors import ImageReadError, SourceNotFoundError
from dermbatch.sources.uri import has_image_extension

#: Leading bytes of the formats classified: JPEG and PNG.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def list_folder(folder: Path) -> Iterator[ImageRef]:
    """Check that the folder exists, then return an iterator over its images, recursively, in sorted order.

    A file is listed if its content starts like a JPEG or PNG, or if its name has an image
    extension. The second rule makes broken, unreadable and other-format images end as
    errors that name the problem, instead of being skipped silently. Symbolic links to
    folders are not followed.
    """
    folder = Path(folder)
    check_folder(folder)
    return _walk(folder)


def check_folder(folder: Path) -> None:
    """Raise SourceNotFoundError unless `folder` is an existing folder."""
    if not folder.exists():
        raise SourceNotFoundError(f"folder {folder} does not exist; pass a folder of JPEG or PNG images")
    if not folder.is_dir():
        raise SourceNotFoundError(f"{folder} is not a folder; pass a folder of JPEG or PNG images")


def _walk(folder: Path) -> Iterator[ImageRef]:
    for root, dirs, files in os.walk(folder, onerror=None, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if has_image_extension(name) or _has_image_signature(path):
                yield ImageRef(uri=str(path.absolute()), size_bytes=_size_or_none(path))


def read_file(path: str) -> tuple[bytes, str]:
    """Read a file and return its bytes and sha256; ImageReadError names the path and cause."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError as error:
        raise ImageReadError(
            f"file {path} does not exist or is a broken symbolic link", transient=False
        ) from error
    except PermissionError as error:
        raise ImageReadError(f"permission denied reading {path}; make it readable by the worker", transient=False) from error
    except IsADirectoryError as error:
        raise ImageReadError(f"{path} is a folder, not an image file", transient=False) from error
    except OSError as error:
        raise ImageReadError(f"cannot read {path}: {error.strerror or error}", transient=False) from error
    return data, hashlib.sha256(data).hexdigest()


def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError:
        return False
    return head.startswith(IMAGE_SIGNATURES)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
