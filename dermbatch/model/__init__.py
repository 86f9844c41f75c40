"""Model code shared by training and inference: the contract, preprocessing and bundles."""

from dermbatch.model.bundle import ModelBundle, load_bundle, save_bundle
from dermbatch.model.contract import ModelContract, ModelMetadata
from dermbatch.model.preprocess import decode_image, preprocess_image, scale_pixels

__all__ = [
    "ModelBundle",
    "ModelContract",
    "ModelMetadata",
    "decode_image",
    "load_bundle",
    "preprocess_image",
    "save_bundle",
    "scale_pixels",
]
