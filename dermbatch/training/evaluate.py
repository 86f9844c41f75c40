"""Metrics of a classifier on labelled images, and the confusion matrix and ROC curve plots.

The metrics dict has the keys `accuracy`, `balanced_accuracy`, `macro_auc`, `ece`,
`per_class` ({label: precision, recall, auc, support}), `melanoma` (sensitivity,
specificity), `confusion_matrix` and `n_images`; it is stored in a bundle's model.json and in
`model_versions.metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dermbatch.model.contract import ModelContract
from dermbatch.model.preprocess import scale_pixels

logger = logging.getLogger(__name__)

#: Confidence bins of the expected calibration error.
ECE_BINS = 15

#: Images per forward pass when predicting a cached array.
PREDICT_BATCH = 256

#: The melanoma class code, whose sensitivity and specificity are reported on their own.
MELANOMA = "mel"

#: File names of the plots `write_plots` creates.
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
ROC_CURVES_PNG = "roc_curves.png"


def predict_probabilities(model, pixels: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Return the model's probabilities for uint8 pixels, scaled by the contract's pixel scaling, in chunks."""
    if len(pixels) == 0:
        return np.zeros((0, len(contract.labels)), dtype=np.float64)
    chunks = []
    for start in range(0, len(pixels), PREDICT_BATCH):
        inputs = scale_pixels(pixels[start:start + PREDICT_BATCH], contract.pixel_scaling)
        chunks.append(np.asarray(model.predict_on_batch(inputs), dtype=np.float64))
    probabilities = np.concatenate(chunks)
    if contract.output == "logits":
        probabilities = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Return the mean recall over the classes present in `labels`."""
    recalls = [float((predicted[labels == c] == c).mean()) for c in range(classes) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Return the top-1 expected calibration error over equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def evaluate_arrays(labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Compute the metrics dict for true class indices and predicted probabilities."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    classes = len(class_names)
    matrix = confusion_matrix(labels, predicted, labels=list(range(classes)))

    per_class: dict[str, dict[str, float | int | None]] = {}
    for index, name in enumerate(class_names):
        support = int(matrix[index].sum())
        predicted_count = int(matrix[:, index].sum())
        positives = labels == index
        has_both = positives.any() and (~positives).any()
        per_class[name] = {
            "precision": _ratio(matrix[index, index], predicted_count),
            "recall": _ratio(matrix[index, index], support),
            "auc": float(roc_auc_score(positives, probabilities[:, index])) if has_both else None,
            "support": support,
        }

    aucs = [values["auc"] for values in per_class.values() if values["auc"] is not None]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "balanced_accuracy": balanced_accuracy(labels, predicted, classes),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "ece": expected_calibration_error(labels, probabilities),
        "per_class": per_class,
        "melanoma": _melanoma(labels, predicted, class_names),
        "confusion_matrix": {"labels": list(class_names), "rows_true_columns_predicted": matrix.tolist()},
        "n_images": int(len(labels)),
    }


def write_plots(labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...], out: Path) -> list[Path]:
    """Write the confusion matrix and one-vs-rest ROC curves as PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    figure, axes = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(
        labels, probabilities.argmax(axis=1), labels=list(range(len(class_names))),
        display_labels=list(class_names), ax=axes, colorbar=False, cmap="Blues",
    )
    axes.set_title(f"Confusion matrix ({len(labels)} images)")
    figure.tight_layout()
    figure.savefig(out / CONFUSION_MATRIX_PNG, dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 6))
    for index, name in enumerate(class_names):
        positives = labels == index
        if positives.any() and (~positives).any():
            false_positive_rate, true_positive_rate, _ = roc_curve(positives, probabilities[:, index])
            axes.plot(false_positive_rate, true_positive_rate, label=name)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("One-vs-rest ROC curves")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / ROC_CURVES_PNG, dpi=120)
    plt.close(figure)
    return [out / CONFUSION_MATRIX_PNG, out / ROC_CURVES_PNG]


def _melanoma(labels: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float | None]:
    if MELANOMA not in class_names:
        return {"sensitivity": None, "specificity": None}
    index = class_names.index(MELANOMA)
    positives = labels == index
    return {
        "sensitivity": _ratio(int((predicted[positives] == index).sum()), int(positives.sum())),
        "specificity": _ratio(int((predicted[~positives] != index).sum()), int((~positives).sum())),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator) / denominator if denominator else None


def evaluate_bundle(
    bundle,
    data_dir: Path,
    *,
    split: str = "test",
    split_file: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Evaluate a model bundle on one side of the stored split of a dataset folder.

    Returns (metrics, true class indices, probabilities). Images are decoded with the bundle's
    own contract, as the workers decode them.
    """
    from dermbatch.training.data import DEFAULT_CACHE_DIR, decode_dataset, load_dataset
    from dermbatch.training.split import DEFAULT_SPLIT_FILE, read_split, select_split, split_sha256

    split_file = split_file or DEFAULT_SPLIT_FILE
    contract = bundle.contract
    dataset = load_dataset(data_dir)
    rows = read_split(split_file) if split != "all" else []
    subset = select_split(dataset, rows, split)

    pixels = decode_dataset(subset, contract, cache_dir=cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)
    labels = subset.class_indices(contract.labels)
    probabilities = predict_probabilities(bundle.load_model(), pixels, contract)

    metrics = evaluate_arrays(labels, probabilities, contract.labels)
    metrics["split"] = split
    if split != "all":
        metrics.update(split_file=split_file.name, split_sha256=split_sha256(split_file))
    logger.info("evaluated %s on %d %s images: balanced accuracy %.3f", bundle.version, len(labels), split,
                metrics["balanced_accuracy"])
    return metrics, labels, probabilities
