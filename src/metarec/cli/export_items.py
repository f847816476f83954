"""``metarec export-items``: every item's vector from the model's item tower, as a table."""

from __future__ import annotations

from pathlib import Path

import typer

from metarec.cli.options import err_console, errors


def export_items(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`, or a saved recommender."),
    out: Path = typer.Option(..., "--out", help="The table to write: .parquet, .csv (columns v0, v1, ...) or .jsonl."),
) -> None:
    """Write item_id, bias and vector of every item (models with item vectors: neural-cf)."""
    with errors():
        from metarec.serve import ColdStartRecommender
        from metarec.serve.batch import write_table

        frame = ColdStartRecommender.load(run, replicas=1).item_vectors()
        write_table(frame, out)
        width = len(frame["vector"].iloc[0]) if len(frame) else 0
        err_console.print(f"wrote {len(frame)} item vectors of {width} dimensions to {out}", highlight=False)
