"""Datasets for training and evaluation: the HAM10000 layout and a folder-per-class layout.

A dataset is a list of image files with a class label each (and a lesion id where the layout
has one). `decode_dataset` turns the files into a uint8 array with the inference code's
`decode_image` and caches the array as an .npz file, keyed by the contract and the file list.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dermbatch.errors import DermbatchError, InvalidImageError, SourceNotFoundError
from dermbatch.model.contract import HAM10000_CLASSES, ModelContract
from dermbatch.model.preprocess import decode_image, scale_pixels

logger = logging.getLogger(__name__)

#: Name of the HAM10000 metadata file; labels come only from it, keyed by image_id.
HAM10000_METADATA = "HAM10000_metadata.csv"

#: File suffixes read from a folder-per-class layout.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: Default folder for decoded-image caches; outside the repository because caches are large.
DEFAULT_CACHE_DIR = Path(os.environ.get("DERMBATCH_CACHE_DIR", Path.home() / ".cache" / "dermbatch"))

#: Threads that decode images when building a cache; Pillow releases the GIL while decoding.
DECODE_THREADS = max(2, os.cpu_count() or 2)


@dataclass
class ImageDataset:
    """Image files with one class label each, and the lesion each image shows where known."""

    image_ids: list[str]
    paths: list[Path]
    labels: list[str]
    lesion_ids: list[str] = field(default_factory=list)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, indices: list[int] | np.ndarray) -> ImageDataset:
        """Return the images at `indices`, in that order."""
        return ImageDataset(
            image_ids=[self.image_ids[i] for i in indices],
            paths=[self.paths[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            lesion_ids=[self.lesion_ids[i] for i in indices] if self.lesion_ids else [],
            root=self.root,
        )

    def extend(self, other: ImageDataset) -> ImageDataset:
        """Return this dataset followed by `other`."""
        lesions = self.lesion_ids + other.lesion_ids if self.lesion_ids and other.lesion_ids else []
        return ImageDataset(
            image_ids=self.image_ids + other.image_ids,
            paths=self.paths + other.paths,
            labels=self.labels + other.labels,
            lesion_ids=lesions,
            root=self.root,
        )

    def class_indices(self, labels: tuple[str, ...]) -> np.ndarray:
        """Return each image's label as its index in `labels` (a model's output order)."""
        position = {label: index for index, label in enumerate(labels)}
        unknown = sorted(set(self.labels) - position.keys())
        if unknown:
            raise DermbatchError(f"dataset labels {', '.join(unknown)} are not among the model's {', '.join(labels)}")
        return np.array([position[label] for label in self.labels], dtype=np.int64)


def load_dataset(root: Path | str) -> ImageDataset:
    """Load a HAM10000-layout folder (it has HAM10000_metadata.csv) or a folder-per-class layout."""
    root = Path(root)
    if not root.is_dir():
        raise SourceNotFoundError(f"dataset folder {root} does not exist")
    if (root / HAM10000_METADATA).is_file():
        return load_ham10000(root)
    return load_class_folders(root)


def load_ham10000(root: Path | str) -> ImageDataset:
    """Load HAM10000: labels and lesion ids from the metadata, images from `images/` or the folder itself."""
    root = Path(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    image_ids, paths, labels, lesion_ids = [], [], [], []
    with (root / HAM10000_METADATA).open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            if row["dx"] not in HAM10000_CLASSES:
                raise DermbatchError(f"{HAM10000_METADATA}: image {row['image_id']} has unknown dx {row['dx']!r}")
            image_ids.append(row["image_id"])
            paths.append(image_dir / f"{row['image_id']}.jpg")
            labels.append(row["dx"])
            lesion_ids.append(row["lesion_id"])

    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise SourceNotFoundError(
            f"{len(missing)} images listed in {HAM10000_METADATA} are missing from {image_dir}, such as {missing[0].name}"
        )
    return ImageDataset(image_ids=image_ids, paths=paths, labels=labels, lesion_ids=lesion_ids, root=root)


def load_class_folders(root: Path | str) -> ImageDataset:
    """Load a folder with one subfolder per class code (`mel/`, `nv/`, ...) holding the images."""
    root = Path(root)
    image_ids, paths, labels = [], [], []
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    unknown = [path.name for path in class_dirs if path.name not in HAM10000_CLASSES]
    if unknown:
        raise DermbatchError(
            f"folders {', '.join(unknown)} in {root} are not HAM10000 class codes ({', '.join(HAM10000_CLASSES)})"
        )
    for class_dir in class_dirs:
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                image_ids.append(path.stem)
                paths.append(path)
                labels.append(class_dir.name)
    if not paths:
        raise SourceNotFoundError(
            f"{root} has neither {HAM10000_METADATA} nor class folders with images (akiec/, bcc/, ... mel/, nv/, vasc/)"
        )
    return ImageDataset(image_ids=image_ids, paths=paths, labels=labels, root=root)


def decode_dataset(
    dataset: ImageDataset,
    contract: ModelContract,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    threads: int = DECODE_THREADS,
) -> np.ndarray:
    """Decode every image to uint8 of shape (n, height, width, 3) with the inference code's `decode_image`.

    The array is cached under `cache_dir` (None disables the cache), keyed by the fitting part
    of the contract and the files' paths, sizes and modification times. An image that cannot
    be decoded raises DermbatchError naming the file, because a dataset should be clean.
    """
    cache_path = _cache_path(dataset, contract, cache_dir) if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path) as cached:
            logger.info("loaded %d decoded images from %s", len(dataset), cache_path)
            return cached["pixels"]

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_image(path.read_bytes(), contract)
        except InvalidImageError as error:
            raise DermbatchError(f"cannot decode training image {path}: {error}") from error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pixels = np.stack(list(pool.map(decode, dataset.paths))) if len(dataset) else _empty(contract)

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_path.with_suffix(".tmp.npz")
        np.savez(temporary, pixels=pixels)
        temporary.replace(cache_path)
        logger.info("decoded %d images and cached them at %s", len(dataset), cache_path)
    return pixels


def model_inputs(pixels: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Scale uint8 pixels to float32 model inputs with the contract's pixel scaling."""
    return scale_pixels(pixels, contract.pixel_scaling)


def _cache_path(dataset: ImageDataset, contract: ModelContract, cache_dir: Path) -> Path:
    digest = hashlib.sha256()
    fitting = {key: contract.to_dict()[key] for key in ("input_height", "input_width", "resize_method", "fit_mode")}
    digest.update(json.dumps(fitting, sort_keys=True).encode())
    for path in dataset.paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"decoded-{contract.input_height}x{contract.input_width}-{digest.hexdigest()[:20]}.npz"


def _empty(contract: ModelContract) -> np.ndarray:
    return np.zeros((0, contract.input_height, contract.input_width, 3), dtype=np.uint8)
