"""Fixtures of the training tests: a tiny synthetic dataset in the HAM10000 layout and its split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermbatch.model.contract import HAM10000_CLASSES

#: A colour per class, so that a tiny model can tell the classes apart within one epoch.
CLASS_COLOURS = {
    "akiec": (200, 60, 60), "bcc": (60, 200, 60), "bkl": (60, 60, 200), "df": (200, 200, 60),
    "mel": (30, 30, 30), "nv": (200, 120, 160), "vasc": (120, 220, 220),
}


def write_synthetic_ham10000(root: Path, *, lesions_per_class: int = 20, seed: int = 0) -> Path:
    """Write a HAM10000-layout folder of 48x36 JPEGs whose colour depends on the class.

    Every third lesion has two images; the split needs at least 20 lesions per class.
    """
    random = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    number = 0
    for label in HAM10000_CLASSES:
        for lesion in range(lesions_per_class):
            lesion_id = f"HAM_{label}_{lesion:03d}"
            for _ in range(2 if lesion % 3 == 0 else 1):
                image_id = f"ISIC_{number:07d}"
                number += 1
                noise = random.integers(-25, 25, size=(36, 48, 3))
                pixels = np.clip(np.array(CLASS_COLOURS[label]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=90)
                rows.append([lesion_id, image_id, label, "histo", "50", "male", "back", "synthetic"])
    with (root / "HAM10000_metadata.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_ham10000(tmp_path_factory.mktemp("synthetic-ham10000"))


@pytest.fixture(scope="session")
def synthetic_split(synthetic_dir: Path, tmp_path_factory) -> Path:
    from dermbatch.training.data import load_dataset
    from dermbatch.training.split import make_split, write_split

    path = tmp_path_factory.mktemp("split") / "split.csv"
    write_split(make_split(load_dataset(synthetic_dir), seed=3), path)
    return path
