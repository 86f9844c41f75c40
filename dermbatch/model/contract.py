"""The model contract: everything about inputs and outputs that is stored with a model version.

Training and inference read class order, input size, resize method and pixel scaling from
here, so no other module hard-codes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dermbatch.errors import ModelContractError

#: The HAM10000 class codes. Used only to validate imported labels and to build datasets;
#: a model's output order is always its contract's `labels`.
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

#: Resize filters a contract may name; the values are Pillow's filter names.
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

#: Pixel scalings: "unit" maps 0..255 to 0..1 (x / 255), "symmetric" to -1..1
#: (x / 127.5 - 1, as keras.applications.mobilenet_v2.preprocess_input does), "none" keeps 0..255.
PIXEL_SCALINGS = ("unit", "symmetric", "none")

#: Aspect-ratio handling: "stretch" resizes the whole frame, and "center_crop" first crops
#: the largest centred region that has the input's aspect ratio.
FIT_MODES = ("stretch", "center_crop")

#: Kinds of output of the model's last layer: probabilities (softmax applied) or logits.
OUTPUT_KINDS = ("probabilities", "logits")


@dataclass(frozen=True)
class ModelContract:
    """Inputs and outputs of a model: class order, input size, resize, fit and scaling."""

    labels: tuple[str, ...]
    input_height: int
    input_width: int
    resize_method: str = "bilinear"
    pixel_scaling: str = "symmetric"
    fit_mode: str = "stretch"
    output: str = "probabilities"

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        self.validate()

    def validate(self) -> None:
        """Raise ModelContractError naming the first invalid field."""
        if len(self.labels) < 2:
            raise ModelContractError(f"a model needs at least 2 labels, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ModelContractError(f"labels must be unique, got {list(self.labels)}")
        if not (8 <= self.input_height <= 4096 and 8 <= self.input_width <= 4096):
            raise ModelContractError(
                f"input size {self.input_height}x{self.input_width} is outside 8..4096 pixels"
            )
        choices = {
            "resize_method": RESIZE_METHODS,
            "pixel_scaling": PIXEL_SCALINGS,
            "fit_mode": FIT_MODES,
            "output": OUTPUT_KINDS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ModelContractError(f"invalid {name} {value!r}; expected one of {', '.join(allowed)}")

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input in pixels."""
        return (self.input_height, self.input_width)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"labels", "input_height", "input_width"} - data.keys()
        if missing:
            raise ModelContractError(f"model contract is missing {', '.join(sorted(missing))}")
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class ModelMetadata:
    """The metadata file stored beside a model's weights file."""

    version: str
    contract: ModelContract
    weights_file: str
    sha256: str
    created_at: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "contract": self.contract.to_dict(),
            "weights_file": self.weights_file,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        for key in ("version", "contract", "weights_file", "sha256"):
            if key not in data:
                raise ModelContractError(f"model metadata is missing {key!r}")
        return cls(
            version=str(data["version"]),
            contract=ModelContract.from_dict(data["contract"]),
            weights_file=str(data["weights_file"]),
            sha256=str(data["sha256"]),
            created_at=str(data.get("created_at", "")),
            training=dict(data.get("training") or {}),
            metrics=dict(data.get("metrics") or {}),
            format_version=int(data.get("format_version", 1)),
        )
