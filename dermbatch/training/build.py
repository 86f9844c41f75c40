"""Networks to train: MobileNetV2 (alpha 0.35) with ImageNet weights and a new head, and a small CNN.

Both take contract-scaled inputs, augment them only while training (Keras preprocessing layers
are inactive in inference) and end in a softmax, so a saved model is used exactly as the
workers call it.
"""

from __future__ import annotations

from pathlib import Path

import keras

from dermbatch.errors import ConfigurationError
from dermbatch.model.contract import ModelContract

#: Backbones that `build_model` builds, and the pixel scaling each expects.
BACKBONES = {"mobilenetv2": "symmetric", "small-cnn": "symmetric"}

#: The ImageNet weights file of MobileNetV2 alpha 0.35 without its top, read from a local path.
MOBILENETV2_WEIGHTS_FILE = "mobilenet_v2_0.35_224_imagenet_no_top.weights.h5"

#: Width multiplier of the MobileNetV2 backbone; it must match the weights file.
MOBILENETV2_ALPHA = 0.35

#: Dropout before the classification layer.
HEAD_DROPOUT = 0.3

#: Maximum rotation as a fraction of a full turn; lesions have no upright orientation.
ROTATION_FACTOR = 0.5

#: Zoom range as fractions of the frame: negative zooms in (a random crop), positive zooms out.
#: Height and width vary independently, which also changes the aspect ratio.
ZOOM_RANGE = (-0.4, 0.15)

#: Maximum shift as a fraction of the frame.
TRANSLATION_FACTOR = 0.1

#: Maximum brightness shift and contrast change as fractions.
BRIGHTNESS_FACTOR = 0.2
CONTRAST_FACTOR = 0.3

#: Value range of "symmetric" pixels, which the brightness and contrast layers clip to.
SYMMETRIC_RANGE = (-1.0, 1.0)


def build_augmentation(seed: int) -> keras.Sequential:
    """Build the training-only augmentation: flips, rotations, crops and scale, shift, brightness, contrast."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(ROTATION_FACTOR, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(ZOOM_RANGE, ZOOM_RANGE, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(TRANSLATION_FACTOR, TRANSLATION_FACTOR, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomBrightness(BRIGHTNESS_FACTOR, value_range=SYMMETRIC_RANGE, seed=seed + 4),
            keras.layers.RandomContrast(CONTRAST_FACTOR, value_range=SYMMETRIC_RANGE, seed=seed + 5),
        ],
        name="augmentation",
    )


def build_model(
    backbone: str, contract: ModelContract, *, weights_dir: Path | None = None, seed: int = 0
) -> tuple[keras.Model, keras.Model | None]:
    """Build the named network for a contract; returns (model, backbone or None for the small CNN)."""
    if backbone == "mobilenetv2":
        return build_mobilenetv2(contract, weights_dir=weights_dir, seed=seed)
    if backbone == "small-cnn":
        return build_small_cnn(contract, seed=seed), None
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


def build_mobilenetv2(
    contract: ModelContract, *, weights_dir: Path | None, seed: int = 0
) -> tuple[keras.Model, keras.Model]:
    """Build MobileNetV2 alpha 0.35 with ImageNet weights from `weights_dir` and a new softmax head.

    The backbone is frozen; `unfreeze` makes it trainable for fine-tuning. Its batch
    normalisation layers always run in inference mode, which keeps the ImageNet statistics
    while fine-tuning on few images.
    """
    weights = _weights_path(weights_dir)
    height, width = contract.input_size
    backbone = keras.applications.MobileNetV2(
        input_shape=(height, width, 3), alpha=MOBILENETV2_ALPHA, include_top=False, weights=str(weights)
    )
    backbone.trainable = False

    inputs = keras.Input(shape=(height, width, 3), name="pixels")
    x = build_augmentation(seed)(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, seed=seed)(x)
    outputs = keras.layers.Dense(len(contract.labels), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2_ham10000"), backbone


def build_small_cnn(contract: ModelContract, *, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128, 256)) -> keras.Model:
    """Build a small CNN trained from scratch: conv blocks with batch normalisation and pooling."""
    height, width = contract.input_size
    inputs = keras.Input(shape=(height, width, 3), name="pixels")
    x = build_augmentation(seed)(inputs)
    for filters in widths:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(HEAD_DROPOUT, seed=seed)(x)
    outputs = keras.layers.Dense(len(contract.labels), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="small_cnn_ham10000")


def unfreeze(backbone: keras.Model, *, trainable_from: int = 0) -> None:
    """Make the backbone's layers from index `trainable_from` on trainable, except batch normalisation."""
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= trainable_from and not is_batch_norm


def _weights_path(weights_dir: Path | None) -> Path:
    if weights_dir is None:
        raise ConfigurationError(
            f"MobileNetV2 needs its ImageNet weights file {MOBILENETV2_WEIGHTS_FILE}; pass the folder holding it "
            "(--weights-dir or DERMBATCH_WEIGHTS_DIR)"
        )
    path = Path(weights_dir) / MOBILENETV2_WEIGHTS_FILE
    if not path.is_file():
        raise ConfigurationError(f"ImageNet weights file {path} does not exist; nothing is downloaded")
    return path
