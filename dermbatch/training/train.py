"""Training: class-weighted batches of cached uint8 images, a frozen-backbone phase, then fine-tuning.

`train_model` fits a network on two in-memory datasets and returns the weights of the epoch
with the best validation balanced accuracy. `train_bundle` runs the whole recipe on a dataset
folder with the stored split, evaluates on its test side and saves a model bundle.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from dermbatch.model.bundle import ModelBundle, save_bundle
from dermbatch.model.contract import HAM10000_CLASSES, ModelContract
from dermbatch.training.build import BACKBONES, build_model, unfreeze
from dermbatch.training.data import DEFAULT_CACHE_DIR, ImageDataset, decode_dataset, load_dataset, model_inputs
from dermbatch.training.evaluate import MELANOMA, balanced_accuracy, evaluate_arrays, predict_probabilities, write_plots
from dermbatch.training.split import DEFAULT_SPLIT_FILE, read_split, select_split, split_sha256

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that shapes a training run; stored in the bundle's `training` record."""

    #: "mobilenetv2" (ImageNet transfer learning) or "small-cnn" (from scratch).
    backbone: str = "mobilenetv2"
    #: Square input side in pixels.
    input_size: int = 160
    #: Epochs with the backbone frozen, training only the new head (MobileNetV2 only).
    head_epochs: int = 3
    #: Epochs of fine-tuning the whole network (for the small CNN: all its epochs).
    epochs: int = 25
    #: Images per gradient step.
    batch_size: int = 32
    #: Adam learning rate of the head phase.
    head_learning_rate: float = 1e-3
    #: Peak Adam learning rate of fine-tuning, decayed to 0 on a cosine.
    learning_rate: float = 3e-4
    #: Class weights are (n / (classes * n_class)) ** power: 1 balances classes fully, 0 not at all.
    class_weight_power: float = 0.5
    #: Seed of shuffling, augmentation and initial weights.
    seed: int = 1
    #: Folder holding the ImageNet weights file of the backbone.
    weights_dir: Path | None = None
    #: Folder for decoded-image caches; None decodes every run.
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    #: Tune a per-class bias of the output layer on the validation side after training (see `tune_class_bias`).
    tune_bias: bool = True
    #: Melanoma recall on the validation side that the tuned offsets must reach, as the
    #: operating point of a triage aid. Where no offsets reach it, the highest recall found is kept.
    min_melanoma_recall: float = 0.75
    #: Resize filter and fit mode written to the contract and used for decoding.
    resize_method: str = "bilinear"
    fit_mode: str = "stretch"

    def contract(self, labels: tuple[str, ...] = HAM10000_CLASSES) -> ModelContract:
        return ModelContract(
            labels=labels, input_height=self.input_size, input_width=self.input_size,
            resize_method=self.resize_method, pixel_scaling=BACKBONES[self.backbone],
            fit_mode=self.fit_mode, output="probabilities",
        )

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["weights_dir"] = str(self.weights_dir) if self.weights_dir else None
        record["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return record


@dataclass
class TrainResult:
    model: Any
    contract: ModelContract
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    output_bias: list[float] | None = None


def class_weights(labels: np.ndarray, classes: int, power: float) -> np.ndarray:
    """Return one weight per class, (n / (classes * n_class)) ** power, scaled to a mean sample weight of 1."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, (len(labels) / (classes * np.maximum(counts, 1))) ** power, 0.0)
    return weights / (weights[labels].mean() if len(labels) else 1.0)


def train_model(
    train_pixels: np.ndarray,
    train_labels: np.ndarray,
    validation_pixels: np.ndarray,
    validation_labels: np.ndarray,
    config: TrainConfig,
    *,
    contract: ModelContract,
    log: Callable[[str], None] = logger.info,
) -> TrainResult:
    """Fit the configured network and keep the weights of the best validation balanced accuracy."""
    keras.utils.set_random_seed(config.seed)
    started = time.monotonic()
    model, backbone = build_model(config.backbone, contract, weights_dir=config.weights_dir, seed=config.seed)
    weights = class_weights(train_labels, len(contract.labels), config.class_weight_power)
    batches = _batches(train_pixels, train_labels, weights, contract, config)
    tracker = _BestEpoch(validation_pixels, validation_labels, contract, log)
    log(f"class weights: {dict(zip(contract.labels, np.round(weights, 3).tolist()))}")

    if backbone is not None and config.head_epochs > 0:
        model.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate), loss="categorical_crossentropy")
        model.fit(batches, epochs=config.head_epochs, callbacks=[tracker], verbose=2)
        unfreeze(backbone)

    # One epoch of linear warm-up from a tenth of the peak, so unfrozen ImageNet features are not
    # disturbed by the large gradients of a head that has just been fitted.
    steps = max(1, config.epochs * len(batches))
    warmup = min(len(batches), steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10, steps - warmup, warmup_target=config.learning_rate, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy")
    model.fit(batches, epochs=config.epochs, callbacks=[tracker], verbose=2)

    tracker.restore_best(model)
    # Inference never reads the optimizer state, and saving it would triple the bundle's size.
    model.optimizer = None

    bias = None
    if config.tune_bias and len(validation_labels):
        probabilities = predict_probabilities(model, validation_pixels, contract)
        required = {contract.labels.index(MELANOMA): config.min_melanoma_recall} if MELANOMA in contract.labels else {}
        bias = tune_class_bias(validation_labels, probabilities, len(contract.labels), min_recall=required)
        add_output_bias(model, bias)
        log(f"output bias tuned on validation: {dict(zip(contract.labels, np.round(bias, 2).tolist()))}")
    return TrainResult(
        model=model, contract=contract, history=tracker.history, best_epoch=tracker.best_epoch,
        seconds=time.monotonic() - started, output_bias=None if bias is None else np.round(bias, 4).tolist(),
    )


def tune_class_bias(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: int,
    *,
    min_recall: dict[int, float] | None = None,
    grid: np.ndarray | None = None,
    rounds: int = 4,
) -> np.ndarray:
    """Find per-class log-probability offsets that maximise the mean of balanced accuracy and accuracy.

    `min_recall` maps class indices to a recall the offsets must reach. Offsets that miss it
    rank below every offset that reaches it, and among themselves by the recall reached.

    Class weights trade accuracy on `nv` for recall on rare classes by an amount fixed before
    training. These offsets set that trade-off on held-out images instead. Adding offset d_c to
    the output layer's bias multiplies class c's probability by exp(d_c) before renormalising.
    The search is coordinate ascent over a grid, a few rounds over the classes.
    """
    grid = np.linspace(-3.0, 3.0, 61) if grid is None else grid
    log_probabilities = np.log(np.clip(probabilities, 1e-12, 1.0))

    def score(offsets: np.ndarray) -> float:
        predicted = (log_probabilities + offsets).argmax(axis=1)
        shortfall = 0.0
        for index, required in (min_recall or {}).items():
            positives = labels == index
            if positives.any():
                shortfall += max(0.0, required - float((predicted[positives] == index).mean()))
        if shortfall > 0:
            return -shortfall
        return 0.5 * balanced_accuracy(labels, predicted, classes) + 0.5 * float((predicted == labels).mean())

    offsets = np.zeros(classes)
    best = score(offsets)
    for _ in range(rounds):
        for index in range(classes):
            for value in grid:
                candidate = offsets.copy()
                candidate[index] = value
                candidate_score = score(candidate)
                if candidate_score > best + 1e-9:
                    best, offsets = candidate_score, candidate
    return offsets


def add_output_bias(model: keras.Model, offsets: np.ndarray) -> None:
    """Add per-class offsets to the bias of the model's softmax layer (named "probabilities")."""
    layer = model.get_layer("probabilities")
    layer.bias.assign(layer.bias.numpy() + offsets.astype(np.float32))


def train_bundle(
    data_dir: Path,
    out: Path,
    *,
    version: str,
    config: TrainConfig,
    split_file: Path = DEFAULT_SPLIT_FILE,
    extra_train: ImageDataset | None = None,
    log: Callable[[str], None] = logger.info,
) -> ModelBundle:
    """Train on the split's train side (plus `extra_train`), evaluate on its test side, save a bundle to `out`."""
    contract = config.contract()
    dataset = load_dataset(data_dir)
    rows = read_split(split_file)
    train = select_split(dataset, rows, "train")
    validation = select_split(dataset, rows, "validation")
    test = select_split(dataset, rows, "test")

    started = time.monotonic()
    train_pixels = decode_dataset(train, contract, cache_dir=config.cache_dir)
    train_labels = train.class_indices(contract.labels)
    if extra_train is not None and len(extra_train):
        train_pixels = np.concatenate([train_pixels, decode_dataset(extra_train, contract, cache_dir=None)])
        train_labels = np.concatenate([train_labels, extra_train.class_indices(contract.labels)])
    validation_pixels = decode_dataset(validation, contract, cache_dir=config.cache_dir)
    test_pixels = decode_dataset(test, contract, cache_dir=config.cache_dir)
    log(f"decoded {len(train_pixels)} train, {len(validation)} validation, {len(test)} test images "
        f"in {time.monotonic() - started:.0f} s")

    result = train_model(
        train_pixels, train_labels, validation_pixels, validation.class_indices(contract.labels),
        config, contract=contract, log=log,
    )

    probabilities = predict_probabilities(result.model, test_pixels, contract)
    metrics = evaluate_arrays(test.class_indices(contract.labels), probabilities, contract.labels)
    metrics.update(split="test", split_file=split_file.name, split_sha256=split_sha256(split_file))
    training = {
        "data": str(Path(data_dir).resolve()),
        "images": {"train": len(train_pixels), "validation": len(validation), "test": len(test),
                   "extra_labels": len(extra_train) if extra_train is not None else 0},
        "split_file": split_file.name,
        "split_sha256": split_sha256(split_file),
        "epochs": {"head": config.head_epochs if config.backbone == "mobilenetv2" else 0,
                   "fine_tune": config.epochs, "best": result.best_epoch},
        "input_size": [contract.input_height, contract.input_width],
        "backbone": config.backbone,
        "seed": config.seed,
        "config": config.to_record(),
        "history": result.history,
        "output_bias": result.output_bias,
        "train_seconds": round(result.seconds, 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    bundle = save_bundle(result.model, out, version=version, contract=contract, training=training, metrics=metrics)
    write_plots(test.class_indices(contract.labels), probabilities, contract.labels, out)
    log(f"saved {version} to {out}: balanced accuracy {metrics['balanced_accuracy']:.3f}, "
        f"accuracy {metrics['accuracy']:.3f}, mel recall {metrics['melanoma']['sensitivity']:.3f}, "
        f"macro AUC {metrics['macro_auc']:.3f}")
    return bundle


def _batches(pixels: np.ndarray, labels: np.ndarray, weights: np.ndarray, contract: ModelContract, config: TrainConfig):
    class ShuffledBatches(keras.utils.PyDataset):
        """Shuffled batches of scaled pixels, one-hot labels and class-weighted sample weights."""

        def __init__(self) -> None:
            super().__init__()
            self.random = np.random.default_rng(config.seed)
            self.order = self.random.permutation(len(pixels))
            self.eye = np.eye(len(contract.labels), dtype=np.float32)

        def __len__(self) -> int:
            return math.ceil(len(pixels) / config.batch_size)

        def __getitem__(self, index: int):
            chosen = np.sort(self.order[index * config.batch_size:(index + 1) * config.batch_size])
            return (model_inputs(pixels[chosen], contract), self.eye[labels[chosen]],
                    weights[labels[chosen]].astype(np.float32))

        def on_epoch_end(self) -> None:
            self.order = self.random.permutation(len(pixels))

    return ShuffledBatches()


class _BestEpoch(keras.callbacks.Callback):
    """Score validation balanced accuracy after every epoch and keep the best weights."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, contract: ModelContract, log: Callable[[str], None]):
        super().__init__()
        self.pixels, self.labels, self.contract, self.log = pixels, labels, contract, log
        self.best_score, self.best_epoch, self.best_weights = -1.0, 0, None
        self.history: list[dict[str, float]] = []
        self.epochs_seen = 0
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_seen += 1
        probabilities = predict_probabilities(self.model, self.pixels, self.contract)
        score = balanced_accuracy(self.labels, probabilities.argmax(axis=1), len(self.contract.labels))
        accuracy = float((probabilities.argmax(axis=1) == self.labels).mean())
        loss = float((logs or {}).get("loss", float("nan")))
        self.history.append({"epoch": self.epochs_seen, "loss": round(loss, 4),
                             "val_balanced_accuracy": round(score, 4), "val_accuracy": round(accuracy, 4)})
        self.log(f"epoch {self.epochs_seen}: loss {loss:.4f}, validation balanced accuracy {score:.4f}, "
                 f"accuracy {accuracy:.4f}, {time.monotonic() - self.started:.0f} s")
        if score > self.best_score:
            self.best_score, self.best_epoch = score, self.epochs_seen
            # Pairs of variable and value, because freezing layers reorders get_weights().
            self.best_weights = [(variable, variable.numpy()) for variable in self.model.weights]

    def restore_best(self, model) -> None:
        for variable, value in self.best_weights or []:
            variable.assign(value)
        self.log(f"kept epoch {self.best_epoch} (validation balanced accuracy {self.best_score:.4f})")
