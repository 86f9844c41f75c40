"""Image preprocessing shared by training and inference: decode, orient, convert, fit and scale.

`decode_image` turns file bytes into a uint8 RGB array of the contract's input size and raises
InvalidImageError with a short reason code for anything it cannot classify. `scale_pixels`
applies the contract's pixel scaling. Training caches the uint8 arrays and scales per batch;
inference calls `preprocess_image`, which does both.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dermbatch.errors import InvalidImageError
from dermbatch.model.contract import ModelContract

#: Formats that are classified; MPO is the multi-picture JPEG some cameras write.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG"})

#: Modes converted to RGB. Other modes (16-bit, 32-bit, float, CMYK, LAB) are rejected
#: because a plain conversion would change the colours given to the model.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})

#: Modes with an alpha channel, composited onto black (the colour of a dermatoscope's vignette).
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

#: Reason codes stored in `images.error_reason`.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
UNSUPPORTED_MODE = "unsupported_mode"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT_IMAGE = "corrupt_image"

# Pillow otherwise pads a truncated JPEG with grey and returns it as if it were whole.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# `decode_image` applies its own `max_pixels` limit right after reading the header and
# before decoding any pixel; Pillow's fixed limit would override a larger configured one.
Image.MAX_IMAGE_PIXELS = None

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def decode_image(data: bytes, contract: ModelContract, *, max_pixels: int = 89_478_485) -> np.ndarray:
    """Decode image bytes to a uint8 array of shape (height, width, 3) fitted to the contract.

    Raises InvalidImageError whose `reason` is one of the reason codes of this module.
    """
    if not data:
        raise InvalidImageError(EMPTY_FILE, "the file is empty (0 bytes)")

    image = _open(data, max_pixels)
    _check_format_and_mode(image)

    if image.format in ("JPEG", "MPO"):
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale while staying at least this large,
        # which is several times faster than decoding at full size and then resizing.
        side = max(contract.input_size)
        image.draft("RGB", (side, side))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(CORRUPT_IMAGE, f"image data is truncated or corrupt: {error}") from error

    image = _orient(image)
    image = _to_rgb(image)
    image = _fit(image, contract)
    return np.asarray(image, dtype=np.uint8)


def scale_pixels(pixels: np.ndarray, pixel_scaling: str) -> np.ndarray:
    """Scale uint8 pixels (any shape) to float32 as the contract's `pixel_scaling` names."""
    values = pixels.astype(np.float32)
    if pixel_scaling == "unit":
        return values / 255.0
    if pixel_scaling == "symmetric":
        return values / 127.5 - 1.0
    if pixel_scaling == "none":
        return values
    raise ValueError(f"invalid pixel_scaling {pixel_scaling!r}; expected unit, symmetric or none")


def preprocess_image(data: bytes, contract: ModelContract, *, max_pixels: int = 89_478_485) -> np.ndarray:
    """Decode image bytes and scale them: the float32 model input for one image."""
    return scale_pixels(decode_image(data, contract, max_pixels=max_pixels), contract.pixel_scaling)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Only reached if other code restored Pillow's own limit, which `max_pixels` replaces.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise InvalidImageError(DECOMPRESSION_BOMB, f"image is too large to decode safely: {error}") from error
        except UnidentifiedImageError as error:
            raise InvalidImageError(
                NOT_AN_IMAGE, f"not a recognised image file (starts with {data[:8]!r}); expected JPEG or PNG"
            ) from error
        except (OSError, SyntaxError, ValueError) as error:
            raise InvalidImageError(CORRUPT_IMAGE, f"image header is corrupt: {error}") from error

    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            DECOMPRESSION_BOMB,
            f"image has {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            "(DERMBATCH_MAX_IMAGE_PIXELS); downscale it before classifying",
        )
    if width < 1 or height < 1:
        raise InvalidImageError(CORRUPT_IMAGE, f"image has an invalid size {width}x{height}")
    return image


def _check_format_and_mode(image: Image.Image) -> None:
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImageError(
            UNSUPPORTED_FORMAT, f"{image.format} images are not supported; convert the file to JPEG or PNG"
        )
    if image.mode not in SUPPORTED_MODES:
        raise InvalidImageError(
            UNSUPPORTED_MODE,
            f"pixel mode {image.mode} is not supported (16-bit, float and CMYK images are rejected); "
            "convert the file to 8-bit RGB",
        )


def _orient(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as error:
        raise InvalidImageError(CORRUPT_IMAGE, f"EXIF orientation data is corrupt: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _fit(image: Image.Image, contract: ModelContract) -> Image.Image:
    target_height, target_width = contract.input_size
    resample = _RESAMPLING[contract.resize_method]

    if contract.fit_mode == "center_crop":
        image = _center_crop(image, target_width / target_height)
    if image.size == (target_width, target_height):
        return image
    return image.resize((target_width, target_height), resample=resample)


def _center_crop(image: Image.Image, aspect: float) -> Image.Image:
    width, height = image.size
    if width / height > aspect:
        crop_width, crop_height = max(1, round(height * aspect)), height
    else:
        crop_width, crop_height = width, max(1, round(width / aspect))
    left = (width - crop_width) // 2
    top = (height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))
