"""A catalogue of image files, good and bad, with the outcome each must have.

Each case writes one file (or link) into a folder and states whether it must be classified
or recorded as an error, and with which reason code.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

CLASSIFIED = "done"
ERROR = "error"


@dataclass(frozen=True)
class Case:
    name: str
    file_name: str
    write: Callable[[Path], None]
    status: str
    reason: str | None = None


def lesion_like(width: int = 120, height: int = 90, mode: str = "RGB") -> Image.Image:
    """A brownish disc on skin tone: an image with real structure, not a flat colour."""
    image = Image.new("RGB", (width, height), (222, 180, 160))
    for y in range(height):
        for x in range(width):
            if ((x - width / 2) / (width / 3)) ** 2 + ((y - height / 2) / (height / 3)) ** 2 < 1:
                image.putpixel((x, y), (110, 70, 50))
    return image.convert(mode) if mode != "RGB" else image


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def two_band_image() -> Image.Image:
    """40 wide by 60 high: red top half, blue bottom half, as it should be displayed."""
    image = Image.new("RGB", (40, 60), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 30))
    return image


def exif_rotated_jpeg(orientation: int) -> bytes:
    """Store `two_band_image` rotated so that a viewer applying the EXIF orientation shows it upright."""
    upright = two_band_image()
    stored = upright.rotate(90, expand=True) if orientation == 6 else upright.rotate(-90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(stored, exif=exif.tobytes())


def png_with_huge_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _bytes(data_factory: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data_factory())


def _symlink_loop(path: Path) -> None:
    partner = path.with_name("loop-partner.jpg")
    os.symlink(partner.name, path)
    os.symlink(path.name, partner)


def _dangling_symlink(path: Path) -> None:
    os.symlink("does-not-exist.jpg", path)


def _palette_with_transparency(path: Path) -> None:
    image = lesion_like().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    path.write_bytes(png_bytes(image, transparency=0))


def _rgba(path: Path) -> None:
    image = lesion_like().convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    path.write_bytes(png_bytes(image))


def _sixteen_bit(path: Path) -> None:
    image = Image.new("I;16", (64, 48))
    image.putpixel((3, 3), 40000)
    path.write_bytes(png_bytes(image))


def _truncated_jpeg() -> bytes:
    data = jpeg_bytes(lesion_like(300, 200))
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = bytearray(png_bytes(lesion_like()))
    data[60:200] = b"\x00" * 140
    return bytes(data)


def _save(image_factory: Callable[[], Image.Image], fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image_factory().save(path, format=fmt)

    return write


CASES: list[Case] = [
    Case("rgb jpeg", "good.jpg", _bytes(lambda: jpeg_bytes(lesion_like())), CLASSIFIED),
    Case("empty file", "empty.jpg", _bytes(lambda: b""), ERROR, "empty_file"),
    Case("text file named jpg", "notes.jpg", _bytes(lambda: b"this is not an image\n"), ERROR, "not_an_image"),
    Case("truncated jpeg", "truncated.jpg", _bytes(_truncated_jpeg), ERROR, "corrupt_image"),
    Case("corrupt jpeg header", "bad-header.jpg", _bytes(lambda: b"\xff\xd8\xff\xe0" + b"\x13" * 400), ERROR,
         "corrupt_image"),
    Case("corrupt png data", "corrupt.png", _bytes(_corrupt_png), ERROR, "corrupt_image"),
    Case("cmyk jpeg", "cmyk.jpg", _bytes(lambda: jpeg_bytes(lesion_like(mode="CMYK"))), ERROR, "unsupported_mode"),
    Case("16-bit png", "sixteen-bit.png", _sixteen_bit, ERROR, "unsupported_mode"),
    Case("rgba png with transparency", "rgba.png", _rgba, CLASSIFIED),
    Case("palette png with transparency", "palette.png", _palette_with_transparency, CLASSIFIED),
    Case("grayscale jpeg", "gray.jpg", _bytes(lambda: jpeg_bytes(lesion_like(mode="L"))), CLASSIFIED),
    Case("grayscale alpha png", "gray-alpha.png", _bytes(lambda: png_bytes(lesion_like(mode="LA"))), CLASSIFIED),
    Case("1-bit png", "one-bit.png", _bytes(lambda: png_bytes(lesion_like(mode="1"))), CLASSIFIED),
    Case("exif orientation 6", "exif6.jpg", _bytes(lambda: exif_rotated_jpeg(6)), CLASSIFIED),
    Case("exif orientation 8", "exif8.jpg", _bytes(lambda: exif_rotated_jpeg(8)), CLASSIFIED),
    Case("decompression bomb", "bomb.png", _bytes(lambda: png_with_huge_header(40000, 40000)), ERROR,
         "decompression_bomb"),
    Case("tiny 1x1 png", "one-pixel.png", _bytes(lambda: png_bytes(Image.new("RGB", (1, 1), (120, 80, 60)))),
         CLASSIFIED),
    Case("webp", "photo.webp", _save(lesion_like, "WEBP"), ERROR, "unsupported_format"),
    Case("tiff", "scan.tiff", _save(lesion_like, "TIFF"), ERROR, "unsupported_format"),
    Case("bmp", "old.bmp", _save(lesion_like, "BMP"), ERROR, "unsupported_format"),
    Case("gif", "anim.gif", _save(lesion_like, "GIF"), ERROR, "unsupported_format"),
    Case("symlink loop", "loop.jpg", _symlink_loop, ERROR, "read_failed"),
    Case("dangling symlink", "dangling.jpg", _dangling_symlink, ERROR, "read_failed"),
    Case("unicode file name", "läsion ü 皮膚.jpg", _bytes(lambda: jpeg_bytes(lesion_like())), CLASSIFIED),
    Case("plus and spaces in name", "a+b c.jpg", _bytes(lambda: jpeg_bytes(lesion_like())), CLASSIFIED),
    Case("jpeg named png", "actually-jpeg.png", _bytes(lambda: jpeg_bytes(lesion_like())), CLASSIFIED),
    Case("jpeg without extension", "no-extension", _bytes(lambda: jpeg_bytes(lesion_like())), CLASSIFIED),
]


def write_catalogue(folder: Path) -> dict[str, Case]:
    """Write every case into `folder`; return the cases keyed by absolute file path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for case in CASES:
        path = folder / case.file_name
        case.write(path)
        written[str(path.absolute())] = case
    partner = folder / "loop-partner.jpg"
    written[str(partner.absolute())] = Case("symlink loop partner", partner.name, lambda path: None, ERROR, "read_failed")
    (folder / "README.txt").write_text("not an image and not listed\n")
    return written
