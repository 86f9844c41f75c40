"""The pattern most tutorials show, for comparison: one Celery task per image.

Each task opens its image with `keras.utils.load_img`, scales it, and calls `model.predict`
on a batch of one. Start a worker with
`celery -A benchmarks.naive_celery worker --concurrency 2` and send `classify_image` tasks.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("naive", broker=os.environ["NAIVE_BROKER_URL"], backend=os.environ["NAIVE_BROKER_URL"])
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")

_model = None


def _load_model():
    global _model
    if _model is None:
        import keras

        from dermbatch.model.bundle import load_bundle

        bundle = load_bundle(os.environ["NAIVE_MODEL_PATH"])
        _model = (keras.models.load_model(bundle.weights_path, compile=False), bundle.contract)
    return _model


@app.task(name="naive.classify_image")
def classify_image(path: str) -> list[float]:
    import keras
    import numpy as np

    from dermbatch.model.preprocess import scale_pixels

    model, contract = _load_model()
    image = keras.utils.load_img(path, target_size=contract.input_size)
    pixels = scale_pixels(keras.utils.img_to_array(image).astype(np.uint8), contract.pixel_scaling)
    return model.predict(pixels[np.newaxis], verbose=0)[0].tolist()
