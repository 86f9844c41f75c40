"""Model bundles: the checks on load, and importing a legacy Keras model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dermbatch.errors import ModelContractError, ModelNotFoundError
from dermbatch.model.bundle import load_bundle, save_bundle
from dermbatch.model.classifier import Classifier
from dermbatch.model.contract import HAM10000_CLASSES, ModelContract

from core.cli import run_cli


def copy_bundle(source, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(source, target)
    return target


def test_bundle_round_trip_keeps_contract(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir)

    assert bundle.version == "tiny-test"
    assert bundle.contract.labels == HAM10000_CLASSES
    assert bundle.contract.input_size == (32, 32)
    assert bundle.load_model().output_shape[-1] == 7


def test_bundle_with_changed_weights_is_rejected(tiny_bundle_dir, tmp_path):
    path = copy_bundle(tiny_bundle_dir, tmp_path)
    with (path / "model.keras").open("ab") as stream:
        stream.write(b"tampered")

    with pytest.raises(ModelContractError, match="sha256"):
        load_bundle(path)


def test_bundle_with_fewer_labels_than_outputs_is_rejected(tiny_bundle_dir, tmp_path):
    path = copy_bundle(tiny_bundle_dir, tmp_path)
    metadata = json.loads((path / "model.json").read_text())
    metadata["contract"]["labels"] = ["mel", "nv"]
    (path / "model.json").write_text(json.dumps(metadata))

    bundle = load_bundle(path)

    with pytest.raises(ModelContractError, match="7 outputs but its contract lists 2 labels"):
        bundle.load_model()


def test_bundle_without_metadata_is_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model.json is missing"):
        load_bundle(tmp_path)


def test_contract_rejects_duplicate_labels():
    with pytest.raises(ModelContractError, match="unique"):
        ModelContract(labels=("mel", "mel", "nv"), input_height=32, input_width=32)


def test_classifier_probabilities_sum_to_one(tiny_bundle_dir):
    classifier = Classifier(load_bundle(tiny_bundle_dir))

    probabilities = classifier.predict(np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32))

    assert probabilities.shape == (5, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


def legacy_h5_model(path, outputs: int = 7):
    """A Sequential model saved in the legacy HDF5 format, as ImageDataGenerator-era code did."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(224, 224, 3)),
        keras.layers.Conv2D(2, 3, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(outputs, activation="softmax"),
    ])
    model.save(path)
    return model


def test_import_legacy_h5_records_stated_contract(embedded_env, tmp_path):
    legacy = tmp_path / "legacy.h5"
    legacy_h5_model(legacy)
    labels = "akiec,bcc,bkl,df,mel,nv,vasc"

    completed = run_cli(
        ["models", "import", str(legacy), "--name", "legacy-cnn", "--labels", labels, "--input-size", "224x224",
         "--scaling", "unit", "--resize", "nearest"],
        embedded_env, tmp_path,
    )

    assert completed.returncode == 0, completed.stderr
    bundle = load_bundle(tmp_path / "models" / "legacy-cnn")
    assert bundle.contract.labels == tuple(labels.split(","))
    assert bundle.contract.pixel_scaling == "unit"
    assert bundle.contract.resize_method == "nearest"
    assert bundle.load_model().output_shape[-1] == 7
    listed = run_cli(["models", "list"], embedded_env, tmp_path)
    assert "legacy-cnn" in listed.stdout


def test_import_with_wrong_label_count_fails_clearly(embedded_env, tmp_path):
    legacy = tmp_path / "legacy.h5"
    legacy_h5_model(legacy)

    completed = run_cli(
        ["models", "import", str(legacy), "--name", "legacy-cnn", "--labels", "mel,nv", "--input-size", "224x224",
         "--scaling", "unit"],
        embedded_env, tmp_path,
    )

    assert completed.returncode == 2
    assert "7 outputs but its contract lists 2 labels" in completed.stderr


def test_import_with_misspelt_label_fails_clearly(embedded_env, tmp_path):
    legacy = tmp_path / "legacy.h5"
    legacy_h5_model(legacy)

    completed = run_cli(
        ["models", "import", str(legacy), "--name", "legacy-cnn", "--labels", "akiec,bcc,bkl,df,melanoma,nv,vasc",
         "--input-size", "224x224", "--scaling", "unit"],
        embedded_env, tmp_path,
    )

    assert completed.returncode == 2
    assert "melanoma" in completed.stderr


def test_save_bundle_rejects_mismatched_contract(tmp_path):
    import keras

    model = keras.Sequential([keras.Input(shape=(8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    contract = ModelContract(labels=HAM10000_CLASSES, input_height=8, input_width=8)

    with pytest.raises(ModelContractError):
        save_bundle(model, tmp_path / "bad", version="bad", contract=contract)
