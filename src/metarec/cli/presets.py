"""``metarec presets``: the named configurations shipped inside the package (``--preset NAME``)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from metarec.cli.options import console, errors, print_json


def print_presets(as_json: bool = False) -> None:
    """The shipped presets, one a line with what each is (from its first comment line)."""
    from metarec.meta.recipe import preset_names, preset_summary

    names = preset_names()
    if as_json:
        print_json({name: preset_summary(name) for name in names})
        return
    table = Table(title="Presets (--preset NAME; fit(frame, preset=NAME))")
    table.add_column("preset", no_wrap=True)
    table.add_column("what it is")
    for name in names:
        table.add_row(name, preset_summary(name))
    console.print(table)


def presets(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the presets shipped with metarec (usable as --preset NAME without a checkout)."""
    with errors():
        print_presets(as_json)


def preset_help(value: Optional[str]) -> Optional[str]:
    """``--preset help`` lists the presets and exits; any other name is checked when it is used."""
    if value is not None and value.strip().lower() == "help":
        with errors():
            print_presets()
        raise typer.Exit()
    return value


PRESET_OPTION = typer.Option(None, "--preset", callback=preset_help, is_eager=True,
                             help="A preset shipped with metarec, under --config ('metarec presets' or "
                                  "'--preset help' lists them).")
