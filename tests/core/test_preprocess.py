"""Preprocessing: every kind of file in the catalogue decodes or fails with the right reason."""

from __future__ import annotations

import numpy as np
import pytest

from dermbatch.errors import InvalidImageError
from dermbatch.model.contract import HAM10000_CLASSES, ModelContract
from dermbatch.model.preprocess import decode_image, preprocess_image, scale_pixels

from core.image_catalogue import CASES, CLASSIFIED, exif_rotated_jpeg, jpeg_bytes, lesion_like, png_bytes

CONTRACT = ModelContract(labels=HAM10000_CLASSES, input_height=24, input_width=32)
FILE_CASES = [case for case in CASES if "symlink" not in case.name]


@pytest.mark.parametrize("case", FILE_CASES, ids=[case.name for case in FILE_CASES])
def test_decode_catalogue_case(case, tmp_path):
    path = tmp_path / case.file_name
    case.write(path)
    data = path.read_bytes()

    if case.status == CLASSIFIED:
        pixels = decode_image(data, CONTRACT)
        assert pixels.shape == (24, 32, 3)
        assert pixels.dtype == np.uint8
    else:
        with pytest.raises(InvalidImageError) as raised:
            decode_image(data, CONTRACT)
        assert raised.value.reason == case.reason
        assert raised.value.message


@pytest.mark.parametrize("orientation", [6, 8])
def test_decode_applies_exif_orientation(orientation):
    contract = ModelContract(labels=HAM10000_CLASSES, input_height=60, input_width=40, resize_method="nearest")

    pixels = decode_image(exif_rotated_jpeg(orientation), contract)

    top, bottom = pixels[5, 20], pixels[55, 20]
    assert top[0] > 200, f"top should be red, got {top}"
    assert top[2] < 60, f"top should be red, got {top}"
    assert bottom[2] > 200, f"bottom should be blue, got {bottom}"
    assert bottom[0] < 60, f"bottom should be blue, got {bottom}"


def test_decode_composites_transparency_on_black():
    image = lesion_like().convert("RGBA")
    image.putalpha(0)

    pixels = decode_image(png_bytes(image), CONTRACT)

    assert pixels.max() == 0


def test_decode_grayscale_gives_three_equal_channels():
    pixels = decode_image(jpeg_bytes(lesion_like(mode="L")), CONTRACT)

    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 1], pixels[..., 2])


def test_decode_center_crop_keeps_middle():
    image = lesion_like(300, 100)
    image.paste((0, 255, 0), (0, 0, 100, 100))
    contract = ModelContract(labels=HAM10000_CLASSES, input_height=16, input_width=16, fit_mode="center_crop")

    pixels = decode_image(png_bytes(image), contract)

    assert pixels[:, :, 1].max() < 250, "the green left third must be cropped away"


def test_decode_rejects_images_above_pixel_limit():
    with pytest.raises(InvalidImageError) as raised:
        decode_image(jpeg_bytes(lesion_like(100, 100)), CONTRACT, max_pixels=5000)

    assert raised.value.reason == "decompression_bomb"
    assert "DERMBATCH_MAX_IMAGE_PIXELS" in raised.value.message


@pytest.mark.parametrize(
    ("scaling", "low", "high"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0), ("none", 0.0, 255.0)]
)
def test_scale_pixels_range(scaling, low, high):
    pixels = np.array([[0, 255]], dtype=np.uint8)

    scaled = scale_pixels(pixels, scaling)

    assert scaled.dtype == np.float32
    assert scaled.min() == pytest.approx(low)
    assert scaled.max() == pytest.approx(high)


def test_preprocess_image_applies_contract_scaling():
    contract = ModelContract(labels=HAM10000_CLASSES, input_height=8, input_width=8, pixel_scaling="unit")

    inputs = preprocess_image(jpeg_bytes(lesion_like()), contract)

    assert inputs.dtype == np.float32
    assert inputs.min() >= 0.0
    assert inputs.max() <= 1.0
