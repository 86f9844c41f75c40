"""`dermbatch models`: list, import and promote model versions."""

from __future__ import annotations

from pathlib import Path

import typer
from dermbatch.cli.console import console
from rich.table import Table
from sqlalchemy import select

from dermbatch.db.engine import session_scope
from dermbatch.db.migrate import upgrade_database
from dermbatch.db.models import ModelStatus, ModelVersion
from dermbatch.db.registry import promote, register_bundle
from dermbatch.errors import DermbatchError
from dermbatch.model.bundle import import_foreign_model, load_bundle
from dermbatch.model.contract import FIT_MODES, HAM10000_CLASSES, PIXEL_SCALINGS, RESIZE_METHODS, ModelContract
from dermbatch.settings import get_settings

models_app = typer.Typer(help="Manage model versions.", no_args_is_help=True)


@models_app.command("list")
def list_models() -> None:
    """List registered model versions with their status and key metrics."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    table = Table(title="model versions")
    for column in ("version", "status", "input", "labels", "balanced acc.", "mel recall", "path"):
        table.add_column(column, overflow="fold")
    with session_scope(settings.database_url) as session:
        for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
            contract = row.contract
            metrics = row.metrics or {}
            table.add_row(
                row.version, row.status, f"{contract['input_height']}x{contract['input_width']}",
                ",".join(contract["labels"]), _metric(metrics.get("balanced_accuracy")),
                _metric(metrics.get("melanoma", {}).get("sensitivity")), row.path,
            )
    console.print(table)


@models_app.command("promote")
def promote_model(version: str = typer.Argument(..., help="Registered version to make active.")) -> None:
    """Make VERSION the active model; workers switch to it between batches."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        promote(session, version)
    console.print(f"model version {version} is now active")


@models_app.command("register")
def register_model(
    path: Path = typer.Argument(..., help="Model bundle folder (with model.json)."),
    activate: bool = typer.Option(False, "--activate", help="Make it the active model."),
) -> None:
    """Register an existing model bundle folder as a model version."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    bundle = load_bundle(path)
    bundle.load_model()
    with session_scope(settings.database_url) as session:
        register_bundle(session, bundle, status=ModelStatus.ACTIVE if activate else ModelStatus.CANDIDATE)
    console.print(f"registered model version {bundle.version} from {path}")


@models_app.command("import")
def import_model(
    model_file: Path = typer.Argument(..., help="Keras model file: .keras, or a legacy .h5 with its architecture."),
    name: str = typer.Option(..., "--name", help="Version name to register, such as legacy-cnn-2019."),
    labels: str = typer.Option(
        ..., "--labels",
        help="Comma-separated class labels in the model's output order, such as akiec,bcc,bkl,df,mel,nv,vasc. "
        "Check the order against the code that trained the model (for ImageDataGenerator: sorted folder names).",
    ),
    input_size: str = typer.Option(..., "--input-size", help="Input HEIGHTxWIDTH in pixels, such as 224x224."),
    scaling: str = typer.Option(..., "--scaling", help=f"Pixel scaling: {', '.join(PIXEL_SCALINGS)} (unit is /255)."),
    resize: str = typer.Option("bilinear", "--resize", help=f"Resize filter: {', '.join(RESIZE_METHODS)}."),
    fit: str = typer.Option("stretch", "--fit", help=f"Aspect handling: {', '.join(FIT_MODES)}."),
    logits: bool = typer.Option(False, "--logits", help="The model outputs logits, not probabilities."),
    activate: bool = typer.Option(False, "--activate", help="Make it the active model."),
    allow_unknown_labels: bool = typer.Option(
        False, "--allow-unknown-labels", help="Accept labels that are not HAM10000 class codes."
    ),
) -> None:
    """Import a Keras model trained elsewhere, stating the labels and preprocessing it expects."""
    settings = get_settings()
    label_list = [label.strip() for label in labels.split(",") if label.strip()]
    unknown = [label for label in label_list if label not in HAM10000_CLASSES]
    if unknown and not allow_unknown_labels:
        raise DermbatchError(
            f"labels {', '.join(unknown)} are not HAM10000 class codes ({', '.join(HAM10000_CLASSES)}); "
            "fix the spelling or pass --allow-unknown-labels"
        )
    height, width = _parse_size(input_size)
    contract = ModelContract(labels=tuple(label_list), input_height=height, input_width=width,
                             resize_method=resize, pixel_scaling=scaling, fit_mode=fit,
                             output="logits" if logits else "probabilities")

    bundle = import_foreign_model(model_file, settings.models_dir / name, version=name, contract=contract)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as session:
        register_bundle(session, bundle, status=ModelStatus.ACTIVE if activate else ModelStatus.CANDIDATE)
    console.print(f"imported {model_file} as model version {name} at {bundle.path}")


def _parse_size(text: str) -> tuple[int, int]:
    height, separator, width = text.lower().partition("x")
    if not separator or not height.isdigit() or not width.isdigit():
        raise typer.BadParameter(f"invalid input size {text!r}; expected HEIGHTxWIDTH such as 224x224")
    return int(height), int(width)


def _metric(value) -> str:
    return "" if value is None else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
