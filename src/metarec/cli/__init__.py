"""The ``metarec`` command line: one module per command, each a thin layer over the library.

The only package that prints; errors become one line and exit code 1 (:func:`metarec.cli.options.errors`).
Commands import the library lazily, so ``metarec --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer

from metarec.cli.benchmark import benchmark
from metarec.cli.data import data_app
from metarec.cli.demo import demo
from metarec.cli.evaluate import evaluate
from metarec.cli.export_items import export_items
from metarec.cli.onboard import onboard
from metarec.cli.options import state
from metarec.cli.presets import presets
from metarec.cli.recommend import recommend
from metarec.cli.serve import serve
from metarec.cli.similar_items import similar_items
from metarec.cli.train import train
from metarec.cli.tune import tune

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Cold-start recommendation by meta-learning.")
app.add_typer(data_app, name="data")
for command in (train, tune, evaluate, recommend, benchmark, onboard, demo, serve, presets):
    app.command()(command)
app.command("export-items")(export_items)
app.command("similar-items")(similar_items)


def _version(value: bool) -> None:
    if value:
        from metarec.version import __version__

        typer.echo(f"metarec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    app()


__all__ = ["app", "main"]
