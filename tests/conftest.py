"""Fixtures shared by every test folder: a tiny model bundle, a SQLite database, the HAM10000 data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("DERMBATCH_SHARED_DIR", REPO_ROOT.parent / "shared"))
HAM10000_DIR = SHARED_DIR / "data" / "ham10000"
WEIGHTS_DIR = SHARED_DIR / "weights"


def full_resolution_image_ids() -> list[str]:
    """Return the ids of the 600x450 originals listed in images.csv."""
    import csv

    with (HAM10000_DIR / "images.csv").open(newline="") as stream:
        return [row["image_id"] for row in csv.DictReader(stream) if row["resolution"].startswith("original")]


@pytest.fixture(scope="session")
def ham10000_dir() -> Path:
    if not (HAM10000_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"HAM10000 data not found at {HAM10000_DIR}; place the shared folder beside the repository")
    return HAM10000_DIR


@pytest.fixture(scope="session")
def full_resolution_folder(ham10000_dir: Path, tmp_path_factory) -> Path:
    """A folder of symbolic links to the 245 full-resolution HAM10000 JPEGs."""
    folder = tmp_path_factory.mktemp("ham10000-full-resolution")
    for image_id in full_resolution_image_ids():
        (folder / f"{image_id}.jpg").symlink_to(ham10000_dir / "images" / f"{image_id}.jpg")
    return folder


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    """A tiny untrained model bundle (32x32 input); its predictions mean nothing."""
    from tiny_model import build_tiny_bundle

    path = tmp_path_factory.mktemp("models") / "tiny-test"
    build_tiny_bundle(path)
    return path


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dermbatch.db'}"


@pytest.fixture()
def embedded_env(monkeypatch, sqlite_url: str, tiny_bundle_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Environment of the embedded default with the tiny model, applied to this process too."""
    from dermbatch.settings import get_settings

    values = {
        "DERMBATCH_DATABASE_URL": sqlite_url,
        "DERMBATCH_MODEL_PATH": str(tiny_bundle_dir),
        "DERMBATCH_MODELS_DIR": str(tmp_path / "models"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {**os.environ, **values}
    get_settings.cache_clear()
