"""A tiny untrained model bundle for tests; its predictions mean nothing."""

from __future__ import annotations

from pathlib import Path

from dermbatch.model.bundle import ModelBundle, save_bundle
from dermbatch.model.contract import HAM10000_CLASSES, ModelContract


def build_tiny_bundle(path: Path, *, version: str = "tiny-test", input_size: int = 32, seed: int = 0) -> ModelBundle:
    """Build and save a small CNN with random weights, for exercising the pipeline only."""
    import keras

    keras.utils.set_random_seed(seed)
    contract = ModelContract(labels=HAM10000_CLASSES, input_height=input_size, input_width=input_size,
                             resize_method="bilinear", pixel_scaling="symmetric")
    inputs = keras.Input(shape=(input_size, input_size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(contract.labels), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    return save_bundle(model, path, version=version, contract=contract,
                       training={"note": "untrained test model with random weights"})
