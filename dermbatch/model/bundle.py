"""Model bundles: a Keras weights file plus `model.json` metadata in one folder.

Loading a bundle checks the weights file's sha256 and that the model's output size equals
the number of labels in its contract, so a bundle whose parts disagree never classifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermbatch.errors import ModelContractError, ModelNotFoundError
from dermbatch.model.contract import ModelContract, ModelMetadata

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

#: Name of the metadata file inside a bundle folder.
METADATA_FILE = "model.json"

#: Name of the weights file that `save_bundle` writes.
WEIGHTS_FILE = "model.keras"


@dataclass
class ModelBundle:
    """A model bundle on disk: its folder and metadata, and the Keras model once loaded."""

    path: Path
    metadata: ModelMetadata
    _model: Any = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def contract(self) -> ModelContract:
        return self.metadata.contract

    @property
    def weights_path(self) -> Path:
        return self.path / self.metadata.weights_file

    def load_model(self) -> keras.Model:
        """Load the Keras model (once), check it against the contract and return it."""
        if self._model is None:
            self._model = _load_checked_model(self)
        return self._model


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(path: Path) -> ModelMetadata:
    """Read and validate a bundle folder's metadata file without loading the model."""
    path = Path(path)
    metadata_path = path / METADATA_FILE
    if not metadata_path.is_file():
        raise ModelNotFoundError(
            f"no model bundle at {path}: {METADATA_FILE} is missing; "
            "train one with `dermbatch train` or import one with `dermbatch models import`"
        )
    try:
        data = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelContractError(f"cannot read model metadata {metadata_path}: {error}") from error
    return ModelMetadata.from_dict(data)


def load_bundle(path: Path | str, *, verify: bool = True) -> ModelBundle:
    """Open a bundle folder and check its weights file's sha256 (unless verify is False)."""
    path = Path(path)
    metadata = read_metadata(path)
    bundle = ModelBundle(path=path, metadata=metadata)

    if not bundle.weights_path.is_file():
        raise ModelNotFoundError(f"model bundle {path} lists weights file {metadata.weights_file}, which is missing")
    if verify:
        actual = sha256_file(bundle.weights_path)
        if actual != metadata.sha256:
            raise ModelContractError(
                f"weights file {bundle.weights_path} has sha256 {actual}, but {METADATA_FILE} "
                f"records {metadata.sha256}; the file was changed or corrupted, restore or re-import it"
            )
    return bundle


def save_bundle(
    model: keras.Model,
    path: Path | str,
    *,
    version: str,
    contract: ModelContract,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelBundle:
    """Save a Keras model and its metadata as a bundle folder and return the bundle."""
    path = Path(path)
    check_output_size(model, contract, source=str(path))
    path.mkdir(parents=True, exist_ok=True)

    weights_path = path / WEIGHTS_FILE
    model.save(weights_path)
    metadata = ModelMetadata(
        version=version,
        contract=contract,
        weights_file=WEIGHTS_FILE,
        sha256=sha256_file(weights_path),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training=training or {},
        metrics=metrics or {},
    )
    write_metadata(path, metadata)
    logger.info("saved model bundle %s to %s", version, path)
    return ModelBundle(path=path, metadata=metadata, _model=model)


def write_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Write a bundle's metadata file atomically (metrics are added after evaluation)."""
    target = Path(path) / METADATA_FILE
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(metadata.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    temporary.replace(target)


def import_foreign_model(
    source: Path | str, destination: Path | str, *, version: str, contract: ModelContract, note: str = ""
) -> ModelBundle:
    """Import a Keras model file (.keras or legacy .h5) whose labels and preprocessing are stated.

    The model is loaded to check its output size, then saved as a `.keras` bundle.
    """
    import keras

    source = Path(source)
    if not source.is_file():
        raise ModelNotFoundError(f"model file {source} does not exist")
    try:
        model = keras.models.load_model(source, compile=False)
    except (OSError, ValueError, TypeError) as error:
        raise ModelContractError(f"cannot load Keras model {source}: {error}") from error

    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    training = {"imported_from": source.name, "source_sha256": sha256_file(source), "note": note}
    return save_bundle(model, destination, version=version, contract=contract, training=training)


def check_output_size(model: keras.Model, contract: ModelContract, *, source: str) -> None:
    """Raise ModelContractError unless the model emits one value per contract label."""
    output_shape = model.output_shape
    if isinstance(output_shape, list):
        raise ModelContractError(f"model {source} has {len(output_shape)} outputs; expected one")
    outputs = output_shape[-1]
    if outputs != len(contract.labels):
        raise ModelContractError(
            f"model {source} has {outputs} outputs but its contract lists {len(contract.labels)} labels "
            f"({', '.join(contract.labels)}); state the labels in the model's output order"
        )


def _load_checked_model(bundle: ModelBundle) -> keras.Model:
    import keras

    try:
        model = keras.models.load_model(bundle.weights_path, compile=False)
    except (OSError, ValueError, TypeError) as error:
        raise ModelContractError(f"cannot load model file {bundle.weights_path}: {error}") from error

    check_output_size(model, bundle.contract, source=str(bundle.path))
    input_shape = model.input_shape
    if isinstance(input_shape, tuple) and len(input_shape) == 4:
        height, width = input_shape[1], input_shape[2]
        if (height, width) != (None, None) and (height, width) != bundle.contract.input_size:
            raise ModelContractError(
                f"model {bundle.path} takes {height}x{width} inputs but its contract states "
                f"{bundle.contract.input_height}x{bundle.contract.input_width}"
            )
    return model
