"""``metarec recommend --input USERS.jsonl --out RECS.parquet``: the top-k of every user of a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import typer

from metarec.cli.options import err_console


def recommend_batch(load: Callable[[Path], Any], run: Path, input_path: Path | None, out: Path | None,
                    single_user_options: bool) -> None:
    """Answer every line of ``input_path`` and write ``out`` whole (inside the caller's ``errors()``)."""
    if input_path is None or out is None or single_user_options:
        raise typer.BadParameter("--input and --out go together, without --rate or --user")
    from metarec.serve.batch import recommend_file, write_table

    table = recommend_file(load(run), input_path)
    write_table(table, out)
    err_console.print(f"wrote {len(table)} recommendations of {table['user_id'].nunique()} users to {out}",
                      highlight=False)
