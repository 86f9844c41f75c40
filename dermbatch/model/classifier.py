"""Forward passes over batches of preprocessed images, with the TensorFlow set-up they need."""

from __future__ import annotations

import logging
import os

import numpy as np

from dermbatch.model.bundle import ModelBundle

logger = logging.getLogger(__name__)


def configure_tensorflow(*, intra_op_threads: int | None, device: str = "cpu") -> str:
    """Size TensorFlow's thread pools and pick the device; call before the first TensorFlow op.

    Returns the device in use, "cpu" or "gpu". With device "gpu" and no GPU visible this
    raises RuntimeError; with "auto" it falls back to the CPU. Memory growth is enabled on
    every GPU so that several processes can share a card.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU") if device in ("auto", "gpu") else []
    if device == "gpu" and not gpus:
        raise RuntimeError("DERMBATCH_DEVICE=gpu but TensorFlow sees no GPU; install a GPU build or use cpu")
    if device == "cpu":
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            logger.warning("could not hide GPUs from TensorFlow; it was already initialised")

    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, intra_op_threads)))
    except RuntimeError:
        logger.warning("TensorFlow was initialised before configure_tensorflow; thread and GPU settings unchanged")
    return "gpu" if gpus else "cpu"


class Classifier:
    """A loaded model bundle that turns a batch of model inputs into probabilities."""

    def __init__(self, bundle: ModelBundle) -> None:
        import tensorflow as tf

        self.bundle = bundle
        self.contract = bundle.contract
        model = bundle.load_model()
        height, width = self.contract.input_size
        signature = [tf.TensorSpec(shape=(None, height, width, 3), dtype=tf.float32)]

        # A traced function avoids model.predict's fixed per-call cost and the memory growth
        # of eager calls on large batches.
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=signature)

    @property
    def version(self) -> str:
        return self.bundle.version

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Return float64 probabilities of shape (n, labels) for float32 inputs of shape (n, h, w, 3)."""
        if len(inputs) == 0:
            return np.zeros((0, len(self.contract.labels)), dtype=np.float64)
        outputs = self._forward(inputs).numpy().astype(np.float64)
        if self.contract.output == "logits":
            outputs = _softmax(outputs)
        # Renormalise so that float32 rounding never leaves a row summing to 0.9999.
        return outputs / outputs.sum(axis=1, keepdims=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)
