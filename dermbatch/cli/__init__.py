"""The `dermbatch` command: one entry point whose subcommands live in this package's modules."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
from rich.markup import escape
from dermbatch.cli.console import error_console
from dermbatch.errors import DermbatchError
from dermbatch.logredact import install_redaction

app = typer.Typer(
    help="Classify dermatoscopic images in bulk into the seven HAM10000 classes. "
    "A research and triage aid, not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Modules that add commands to `app`, each through a `register(app)` function.
COMMAND_MODULES = (
    "dermbatch.cli.classify",
    "dermbatch.cli.results",
    "dermbatch.cli.models",
    "dermbatch.cli.database",
    "dermbatch.cli.distributed",
    "dermbatch.cli.training",
)


@app.callback()
def _configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    if verbose:
        # Processes that `classify` spawns read the level from the environment.
        os.environ["DERMBATCH_LOG_LEVEL"] = "DEBUG"
    level = logging.getLevelName(os.environ.get("DERMBATCH_LOG_LEVEL", "WARNING"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_redaction()


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(app)


_register_commands()


def main() -> None:
    """Run the command line; a DermbatchError becomes a one-line message and exit status 2."""
    try:
        app()
    except DermbatchError as error:
        error_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(2)
