"""The lesion-grouped split: no lesion on two sides, class proportions kept, stored file reproducible."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from dermbatch.errors import DermbatchError
from dermbatch.training.data import load_dataset
from dermbatch.training.split import (
    DEFAULT_SPLIT_FILE, SPLITS, make_split, read_split, select_split, summarize,
)

#: Largest allowed difference, in percentage points, between a class's share on one side and overall.
STRATIFICATION_TOLERANCE = 1.5


def _sides_per_lesion(rows) -> dict[str, set[str]]:
    sides = defaultdict(set)
    for row in rows:
        sides[row.lesion_id].add(row.split)
    return sides


def test_stored_split_keeps_each_lesion_on_one_side():
    rows = read_split(DEFAULT_SPLIT_FILE)

    crossing = {lesion: sides for lesion, sides in _sides_per_lesion(rows).items() if len(sides) > 1}

    assert len(rows) == 10015
    assert crossing == {}


def test_stored_split_is_stratified_by_class():
    rows = read_split(DEFAULT_SPLIT_FILE)
    overall = Counter(row.dx for row in rows)
    counts = summarize(rows)

    for side in SPLITS:
        side_total = sum(counts[side].values())
        for label, count in overall.items():
            share = 100 * counts[side].get(label, 0) / side_total
            expected = 100 * count / len(rows)
            assert abs(share - expected) <= STRATIFICATION_TOLERANCE, (side, label, share, expected)


def test_stored_split_sizes():
    counts = {side: sum(values.values()) for side, values in summarize(read_split()).items()}

    assert 0.68 <= counts["train"] / 10015 <= 0.72
    assert 0.13 <= counts["validation"] / 10015 <= 0.17
    assert 0.13 <= counts["test"] / 10015 <= 0.17


def test_stored_split_matches_metadata_and_seed(ham10000_dir):
    dataset = load_dataset(ham10000_dir)
    stored = {row.image_id: row for row in read_split()}

    recomputed = {row.image_id: row for row in make_split(dataset)}

    assert recomputed == stored


def test_make_split_grouped_and_deterministic(synthetic_dir):
    dataset = load_dataset(synthetic_dir)

    first = make_split(dataset, seed=3)
    second = make_split(dataset, seed=3)

    assert first == second
    assert all(len(sides) == 1 for sides in _sides_per_lesion(first).values())
    assert {row.split for row in first} == set(SPLITS)


def test_select_split_rejects_label_disagreement(synthetic_dir, synthetic_split):
    dataset = load_dataset(synthetic_dir)
    dataset.labels[0] = "vasc" if dataset.labels[0] != "vasc" else "nv"

    with pytest.raises(DermbatchError, match="in the split file"):
        select_split(dataset, read_split(synthetic_split), "train")


def test_ham10000_labels_come_from_metadata(synthetic_dir):
    dataset = load_dataset(synthetic_dir)

    assert len(dataset) == 7 * 27
    assert dataset.labels[0] == "akiec"
    assert dataset.paths[0].name == "ISIC_0000000.jpg"
    assert dataset.lesion_ids[:3] == ["HAM_akiec_000", "HAM_akiec_000", "HAM_akiec_001"]
