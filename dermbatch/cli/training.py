"""`dermbatch train`, `evaluate`, `evaluate-job`, `retrain`, `split`, `labels import`, `data link-full-resolution`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dermbatch.errors import DermbatchError
from dermbatch.settings import get_settings

console = Console()
labels_app = typer.Typer(help="Import confirmed diagnoses for retraining.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare dataset folders.", no_args_is_help=True)

#: The stored split, shown in help texts; imported lazily because it pulls in scikit-learn.
SPLIT_FILE_HELP = "Split CSV (image_id,lesion_id,dx,split); default: the split stored in the package."


def train(
    data: Path = typer.Argument(..., help="HAM10000 folder (HAM10000_metadata.csv and images/) to train on."),
    out: Path = typer.Option(None, "--out", help="Bundle folder to write; default: DERMBATCH_MODELS_DIR/VERSION."),
    version: str = typer.Option(None, "--version", help="Model version name; default: ham10000-BACKBONE-SIZE-TIMESTAMP."),
    backbone: str = typer.Option("mobilenetv2", "--backbone", help="mobilenetv2 (ImageNet transfer learning) or small-cnn."),
    epochs: int = typer.Option(None, "--epochs", min=0, help="Fine-tuning epochs (all epochs for small-cnn); default 25."),
    head_epochs: int = typer.Option(None, "--head-epochs", min=0, help="Epochs with the backbone frozen; default 3."),
    input_size: int = typer.Option(None, "--input-size", min=32, help="Square input side in pixels; default 160."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Images per gradient step; default 32."),
    learning_rate: float = typer.Option(None, "--learning-rate", help="Peak fine-tuning learning rate; default 3e-4."),
    seed: int = typer.Option(None, "--seed", help="Seed of shuffling, augmentation and initial weights."),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Folder of the ImageNet weights file; default: DERMBATCH_WEIGHTS_DIR."),
    split_file: Path = typer.Option(None, "--split-file", help=SPLIT_FILE_HELP),
    tune_bias: bool = typer.Option(True, "--tune-bias/--no-tune-bias", help="Tune per-class output offsets on the validation side."),
    do_register: bool = typer.Option(True, "--register/--no-register", help="Register the bundle as a candidate model version."),
    activate: bool = typer.Option(False, "--activate", help="Register it as the active model version."),
) -> None:
    """Train a classifier on the train side of the stored split, evaluate it on the test side, save a bundle."""
    from datetime import datetime, timezone

    from dermbatch.training.split import DEFAULT_SPLIT_FILE
    from dermbatch.training.train import TrainConfig, train_bundle

    settings = get_settings()
    config = TrainConfig(backbone=backbone, weights_dir=weights_dir or settings.weights_dir, tune_bias=tune_bias)
    for name, value in {"epochs": epochs, "head_epochs": head_epochs, "input_size": input_size,
                        "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed}.items():
        if value is not None:
            setattr(config, name, value)
    if backbone not in ("mobilenetv2", "small-cnn"):
        raise typer.BadParameter(f"invalid backbone {backbone!r}; expected mobilenetv2 or small-cnn")

    version = version or f"ham10000-{backbone}-{config.input_size}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    out = out or settings.models_dir / version
    bundle = train_bundle(data, out, version=version, config=config, split_file=split_file or DEFAULT_SPLIT_FILE,
                          log=console.print)
    print_metrics(bundle.metadata.metrics, title=f"{version} on the test split")
    if do_register or activate:
        _register(bundle, activate=activate)


def evaluate(
    model: Path = typer.Argument(..., help="Model bundle folder (with model.json)."),
    data: Path = typer.Argument(..., help="HAM10000 folder, or a folder with one subfolder per class code."),
    split: str = typer.Option("test", "--split", help="Side of the split to score: test, validation, train, or all."),
    out: Path = typer.Option(None, "--out", help="Folder for metrics.json, confusion_matrix.png and roc_curves.png."),
    split_file: Path = typer.Option(None, "--split-file", help=SPLIT_FILE_HELP),
    save: bool = typer.Option(False, "--save", help="Store the metrics in the bundle's model.json and its registry row."),
) -> None:
    """Score a model bundle on labelled images: accuracy, balanced accuracy, per-class metrics, AUC, calibration."""
    from dermbatch.model.bundle import load_bundle, write_metadata
    from dermbatch.training.evaluate import evaluate_bundle, write_plots

    bundle = load_bundle(model)
    metrics, labels, probabilities = evaluate_bundle(bundle, data, split=split, split_file=split_file)
    print_metrics(metrics, title=f"{bundle.version} on {metrics['n_images']} {split} images")

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        for path in write_plots(labels, probabilities, bundle.contract.labels, out):
            console.print(f"wrote {path}")
    if save:
        bundle.metadata.metrics = metrics
        write_metadata(bundle.path, bundle.metadata)
        _store_registry_metrics(bundle.version, bundle.metadata.sha256, metrics)
        console.print(f"stored the metrics in {bundle.path / 'model.json'}")


def evaluate_job(
    job: str = typer.Argument(..., help="Job id, or latest."),
    diagnoses: Path = typer.Argument(..., help="CSV with image_id and dx columns, such as HAM10000_metadata.csv."),
    out: Path = typer.Option(None, "--out", help="Folder for metrics.json, confusion_matrix.png and roc_curves.png."),
    split: str = typer.Option(None, "--split", help="Score only images on this side (train, validation, test) of the split."),
    split_file: Path = typer.Option(None, "--split-file", help=SPLIT_FILE_HELP),
) -> None:
    """Score a finished classify job against known diagnoses, matching file names to image ids."""
    from dermbatch.db.engine import session_scope
    from dermbatch.training.evaluate import write_plots
    from dermbatch.training.job_scoring import read_diagnoses, score_job
    from dermbatch.training.split import DEFAULT_SPLIT_FILE, SPLITS, read_split

    known = read_diagnoses(diagnoses)
    if split is not None:
        if split not in SPLITS:
            raise typer.BadParameter(f"invalid split {split!r}; expected one of {', '.join(SPLITS)}")
        side = {row.image_id for row in read_split(split_file or DEFAULT_SPLIT_FILE) if row.split == split}
        known = {image_id: dx for image_id, dx in known.items() if image_id in side}

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        metrics, labels, probabilities, class_names = score_job(session, job, known)
    print_metrics(metrics, title=f"job {metrics['job_id']}: {metrics['n_images']} images with a diagnosis")
    console.print(f"{metrics['unmatched']} images without a diagnosis (or outside --split) and "
                  f"{metrics['errors']} failed images left out")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        for path in write_plots(labels, probabilities, class_names, out):
            console.print(f"wrote {path}")


def retrain() -> None:
    """Run one scheduled-retrain check now: train a challenger if labels arrived, promote it if no worse."""
    from dermbatch.training.retrain import run_scheduled_retrain

    run = run_scheduled_retrain(get_settings())
    console.print(f"retrain run {run.id}: {run.status}: {run.reason}")


def split(
    data: Path = typer.Argument(..., help="HAM10000 folder with HAM10000_metadata.csv."),
    out: Path = typer.Option(..., "--out", help="CSV file to write."),
    seed: int = typer.Option(None, "--seed", help="Seed of the lesion-grouped folds."),
) -> None:
    """Write a lesion-grouped, class-stratified train/validation/test split of a HAM10000 folder."""
    from dermbatch.training.data import load_dataset
    from dermbatch.training.split import SPLIT_SEED, make_split, summarize, write_split

    rows = make_split(load_dataset(data), seed=SPLIT_SEED if seed is None else seed)
    write_split(rows, out)
    for side, counts in summarize(rows).items():
        console.print(f"{side}: {sum(counts.values())} images, {counts}")


@labels_app.command("import")
def import_labels(
    csv_file: Path = typer.Argument(..., help="CSV with columns image (URI or HAM10000 image id), diagnosis, source."),
    source: str = typer.Option("", "--source", help="Source recorded for rows whose source column is empty."),
) -> None:
    """Store confirmed diagnoses; rows with an invalid diagnosis are listed and skipped, the rest are kept."""
    from dermbatch.db.engine import session_scope
    from dermbatch.db.migrate import upgrade_database
    from dermbatch.training.labels import import_labels_csv

    if not csv_file.is_file():
        raise DermbatchError(f"labels file {csv_file} does not exist")
    settings = get_settings()
    upgrade_database(settings.database_url)
    try:
        with session_scope(settings.database_url) as session:
            outcome = import_labels_csv(session, csv_file, default_source=source)
    except ValueError as error:
        raise DermbatchError(str(error)) from error

    console.print(f"imported {outcome.imported} labels from {csv_file}")
    for problem in outcome.rejected:
        console.print(f"[red]rejected {problem}[/]", highlight=False)
    if outcome.rejected:
        console.print(f"{len(outcome.rejected)} rows rejected; fix them and import only those rows again")
        raise typer.Exit(1)


@data_app.command("link-full-resolution")
def link_full_resolution(
    data_dir: Path = typer.Argument(..., help="HAM10000 folder with images.csv and images/."),
    dest: Path = typer.Argument(..., help="Folder to create, holding one symbolic link per full-resolution image."),
) -> None:
    """Create a folder of symbolic links to the full-resolution (600x450) images that images.csv lists."""
    index = data_dir / "images.csv"
    if not index.is_file():
        raise DermbatchError(f"{index} does not exist; DATA_DIR must be a HAM10000 folder with images.csv")
    with index.open(newline="", encoding="utf-8") as stream:
        image_ids = [row["image_id"] for row in csv.DictReader(stream) if row["resolution"].startswith("original")]

    dest.mkdir(parents=True, exist_ok=True)
    created = 0
    for image_id in image_ids:
        target = (data_dir / "images" / f"{image_id}.jpg").resolve()
        if not target.is_file():
            raise DermbatchError(f"image {target} listed in {index} does not exist")
        link = dest / f"{image_id}.jpg"
        if link.is_symlink() or link.exists():
            if link.resolve() == target:
                continue
            raise DermbatchError(f"{link} already exists and is not a link to {target}; use an empty folder")
        link.symlink_to(target)
        created += 1
    console.print(f"{dest}: {len(image_ids)} full-resolution images ({created} links created)")


def print_metrics(metrics: dict, *, title: str) -> None:
    """Print the headline metrics and the per-class table."""
    melanoma = metrics.get("melanoma") or {}
    console.print(
        f"{title}: accuracy {_fmt(metrics.get('accuracy'))}, balanced accuracy {_fmt(metrics.get('balanced_accuracy'))}, "
        f"macro AUC {_fmt(metrics.get('macro_auc'))}, ECE {_fmt(metrics.get('ece'))}, "
        f"melanoma sensitivity {_fmt(melanoma.get('sensitivity'))}, specificity {_fmt(melanoma.get('specificity'))}"
    )
    table = Table()
    for column in ("class", "precision", "recall", "AUC", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, values in (metrics.get("per_class") or {}).items():
        table.add_row(name, _fmt(values["precision"]), _fmt(values["recall"]), _fmt(values["auc"]), str(values["support"]))
    console.print(table)


def _register(bundle, *, activate: bool) -> None:
    from dermbatch.db.engine import session_scope
    from dermbatch.db.migrate import upgrade_database
    from dermbatch.db.models import ModelStatus
    from dermbatch.db.registry import register_bundle

    settings = get_settings()
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        row = register_bundle(session, bundle, status=ModelStatus.ACTIVE if activate else ModelStatus.CANDIDATE)
        console.print(f"registered model version {row.version} as {row.status}")


def _store_registry_metrics(version: str, sha256: str, metrics: dict) -> None:
    from sqlalchemy import select

    from dermbatch.db.engine import session_scope
    from dermbatch.db.migrate import upgrade_database
    from dermbatch.db.models import ModelVersion

    settings = get_settings()
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if row is not None and row.sha256 == sha256:
            row.metrics = metrics


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("evaluate-job")(evaluate_job)
    app.command("retrain")(retrain)
    app.command("split")(split)
    app.add_typer(labels_app, name="labels")
    app.add_typer(data_app, name="data")
