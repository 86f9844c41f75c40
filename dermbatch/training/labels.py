"""Confirmed diagnoses: importing them from CSV and turning them into training images.

A label's `image_ref` is an image URI or a HAM10000 image id. Retraining uses the labels
whose image it can read from local disk and that are not in the validation or test side of
the stored split, because those sides must stay the same for every model version.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy.orm import Session

from dermbatch.db.models import Label
from dermbatch.model.contract import HAM10000_CLASSES
from dermbatch.training.data import ImageDataset
from dermbatch.training.split import SplitRow

#: Accepted header names of each column of a labels CSV, first match wins.
IMAGE_COLUMNS = ("image", "image_uri", "uri", "image_id", "image_ref")
DIAGNOSIS_COLUMNS = ("diagnosis", "dx", "label")
SOURCE_COLUMNS = ("source",)


@dataclass
class LabelImport:
    """Outcome of importing a labels CSV: rows stored and rows rejected with the reason."""

    imported: int = 0
    rejected: list[str] = field(default_factory=list)


def import_labels_csv(session: Session, path: Path, *, default_source: str = "") -> LabelImport:
    """Store every valid row of a labels CSV and return the rejected rows, each with its line number.

    A row is rejected when its image reference is empty, its diagnosis is not a HAM10000 class
    code, or it has no source and no `default_source` is given. Valid rows are stored even when
    other rows are rejected.
    """
    outcome = LabelImport()
    with Path(path).open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        image_column = _pick(header, IMAGE_COLUMNS)
        diagnosis_column = _pick(header, DIAGNOSIS_COLUMNS)
        source_column = _pick(header, SOURCE_COLUMNS)
        if image_column is None or diagnosis_column is None:
            raise ValueError(
                f"{path}: the header must name an image column ({', '.join(IMAGE_COLUMNS)}) and a diagnosis "
                f"column ({', '.join(DIAGNOSIS_COLUMNS)}); found {', '.join(header) or 'no header'}"
            )

        for line, raw in enumerate(reader, start=2):
            row = {(key or "").strip().lower(): (value or "").strip() for key, value in raw.items()}
            problem = _row_problem(row, image_column, diagnosis_column, source_column, default_source)
            if problem:
                outcome.rejected.append(f"line {line}: {problem}")
                continue
            session.add(Label(
                image_ref=row[image_column], diagnosis=row[diagnosis_column].lower(),
                source=(row.get(source_column or "", "") or default_source)[:200],
            ))
            outcome.imported += 1
    session.flush()
    return outcome


def labelled_images(labels: list[Label], data_dir: Path | None, split_rows: list[SplitRow]) -> tuple[ImageDataset, dict[str, int]]:
    """Return the labels' images that can be trained on, and counts of the labels left out by reason."""
    held_out = {row.image_id for row in split_rows if row.split != "train"}
    image_dir = _image_dir(data_dir)
    dataset = ImageDataset(image_ids=[], paths=[], labels=[])
    skipped = {"held_out": 0, "unresolved": 0}
    for label in labels:
        path = resolve_image_ref(label.image_ref, image_dir)
        image_id = Path(label.image_ref).stem if path is not None else label.image_ref
        if path is None:
            skipped["unresolved"] += 1
        elif image_id in held_out:
            skipped["held_out"] += 1
        else:
            dataset.image_ids.append(image_id)
            dataset.paths.append(path)
            dataset.labels.append(label.diagnosis)
    return dataset, skipped


def resolve_image_ref(image_ref: str, image_dir: Path | None) -> Path | None:
    """Return the local file of an image reference (a path, a file:// URI or a HAM10000 image id), or None."""
    # NOTE: s3:// and other remote references are not read here. Labels of images in a bucket
    # are counted as unresolved and left out of retraining.
    parsed = urlparse(image_ref)
    if parsed.scheme == "file":
        candidate = Path(unquote(parsed.path))
    elif parsed.scheme in ("", None) or len(parsed.scheme) == 1:
        candidate = Path(image_ref)
    else:
        return None
    if candidate.is_file():
        return candidate
    if image_dir is not None and candidate.name == image_ref:
        for suffix in ("", ".jpg"):
            in_data = image_dir / f"{image_ref}{suffix}"
            if in_data.is_file():
                return in_data
    return None


def _row_problem(row: dict[str, str], image_column: str, diagnosis_column: str,
                 source_column: str | None, default_source: str) -> str | None:
    if not row.get(image_column):
        return f"the {image_column} column is empty"
    diagnosis = row.get(diagnosis_column, "").lower()
    if diagnosis not in HAM10000_CLASSES:
        return f"invalid diagnosis {row.get(diagnosis_column, '')!r}; expected one of {', '.join(HAM10000_CLASSES)}"
    if not (row.get(source_column or "") or default_source):
        return "the source is empty; fill the source column or pass --source"
    return None


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in header), None)


def _image_dir(data_dir: Path | None) -> Path | None:
    if data_dir is None:
        return None
    data_dir = Path(data_dir)
    return data_dir / "images" if (data_dir / "images").is_dir() else data_dir
