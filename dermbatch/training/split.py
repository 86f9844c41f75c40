"""The fixed train/validation/test split of HAM10000, grouped by lesion and stratified by class.

All images of one `lesion_id` fall on one side, so no lesion seen in training is scored in
validation or test. The split is computed once, stored as a CSV in this package and read by
every training run and every evaluation, so every model version is scored on the same test set.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermbatch.errors import DermbatchError
from dermbatch.model.bundle import sha256_file
from dermbatch.training.data import ImageDataset

#: The stored HAM10000 split: image_id,lesion_id,dx,split.
DEFAULT_SPLIT_FILE = Path(__file__).parent / "splits" / "ham10000_split.csv"

#: Names of the split's sides.
SPLITS = ("train", "validation", "test")

#: Seed of the stored split.
SPLIT_SEED = 20180161

#: Lesion-grouped folds; validation and test take `VALIDATION_FOLDS` and `TEST_FOLDS` of them.
SPLIT_FOLDS = 20
VALIDATION_FOLDS = 3
TEST_FOLDS = 3


@dataclass(frozen=True)
class SplitRow:
    image_id: str
    lesion_id: str
    dx: str
    split: str


def make_split(dataset: ImageDataset, *, seed: int = SPLIT_SEED) -> list[SplitRow]:
    """Split a dataset with lesion ids into train (70%), validation (15%) and test (15%).

    StratifiedGroupKFold deals lesions into 20 folds with the class mix of each fold close to
    the whole; 3 folds become test, 3 validation, the rest train.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not dataset.lesion_ids:
        raise DermbatchError("a lesion-grouped split needs lesion ids; this dataset has none")
    _check_one_label_per_lesion(dataset)

    folds = StratifiedGroupKFold(n_splits=SPLIT_FOLDS, shuffle=True, random_state=seed)
    side = np.empty(len(dataset), dtype=object)
    placeholder = np.zeros(len(dataset))
    for fold, (_, fold_indices) in enumerate(folds.split(placeholder, dataset.labels, groups=dataset.lesion_ids)):
        if fold < TEST_FOLDS:
            side[fold_indices] = "test"
        elif fold < TEST_FOLDS + VALIDATION_FOLDS:
            side[fold_indices] = "validation"
        else:
            side[fold_indices] = "train"

    return [
        SplitRow(image_id, lesion_id, dx, str(split))
        for image_id, lesion_id, dx, split in zip(dataset.image_ids, dataset.lesion_ids, dataset.labels, side)
    ]


def write_split(rows: list[SplitRow], path: Path) -> None:
    """Write split rows as CSV sorted by image id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["image_id", "lesion_id", "dx", "split"])
        for row in sorted(rows, key=lambda row: row.image_id):
            writer.writerow([row.image_id, row.lesion_id, row.dx, row.split])


def read_split(path: Path = DEFAULT_SPLIT_FILE) -> list[SplitRow]:
    """Read a split CSV written by `write_split`."""
    if not path.is_file():
        raise DermbatchError(f"split file {path} does not exist; create it with `dermbatch split`")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = [SplitRow(row["image_id"], row["lesion_id"], row["dx"], row["split"]) for row in csv.DictReader(stream)]
    invalid = [row for row in rows if row.split not in SPLITS]
    if invalid:
        raise DermbatchError(f"split file {path}: image {invalid[0].image_id} has invalid split {invalid[0].split!r}")
    return rows


def split_sha256(path: Path = DEFAULT_SPLIT_FILE) -> str:
    """Return the split file's sha256, recorded with every model trained or evaluated on it."""
    return sha256_file(path)


def select_split(dataset: ImageDataset, rows: list[SplitRow], split: str) -> ImageDataset:
    """Return the images of `dataset` that `rows` put in `split`, checking labels against the split file.

    A dataset without HAM10000 image ids (a folder-per-class layout) is returned whole for
    split "all" and raises otherwise.
    """
    if split == "all":
        return dataset
    if split not in SPLITS:
        raise DermbatchError(f"invalid split {split!r}; expected one of {', '.join(SPLITS)} or all")

    by_id = {row.image_id: row for row in rows}
    indices = [index for index, image_id in enumerate(dataset.image_ids) if image_id in by_id]
    if not indices:
        raise DermbatchError(
            "no image of the dataset is listed in the split file; use --split all for a dataset outside HAM10000"
        )
    for index in indices:
        row = by_id[dataset.image_ids[index]]
        if row.dx != dataset.labels[index]:
            raise DermbatchError(
                f"image {row.image_id} is {dataset.labels[index]!r} in the dataset but {row.dx!r} in the split file"
            )
    return dataset.subset([index for index in indices if by_id[dataset.image_ids[index]].split == split])


def summarize(rows: list[SplitRow]) -> dict[str, dict[str, int]]:
    """Count images per class on each side of a split."""
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for row in rows:
        counts[row.split][row.dx] += 1
    return {split: dict(sorted(counter.items())) for split, counter in counts.items()}


def _check_one_label_per_lesion(dataset: ImageDataset) -> None:
    seen: dict[str, str] = {}
    for image_id, lesion_id, label in zip(dataset.image_ids, dataset.lesion_ids, dataset.labels):
        if seen.setdefault(lesion_id, label) != label:
            raise DermbatchError(f"lesion {lesion_id} has images labelled {seen[lesion_id]} and {label} (at {image_id})")
