"""``metarec similar-items``: the items closest to one by cosine similarity of the model's item vectors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from metarec.cli.options import console, errors, print_json


def similar_items(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`, or a saved recommender."),
    item_id: str = typer.Argument(..., help="The item's id (the dataset's own)."),
    k: int = typer.Option(10, help="How many items."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print the k items most similar to ITEM_ID (models with item vectors: neural-cf)."""
    with errors():
        from metarec.serve import ColdStartRecommender

        items = ColdStartRecommender.load(run, replicas=1).similar_items(item_id, k)
        if as_json:
            print_json({"item_id": item_id, "items": items})
            return
        titled = any(item.get("title") for item in items)
        table = Table(title=f"similar to {item_id}")
        for col in ("rank", "item_id", "cosine", *(["title"] if titled else [])):
            table.add_column(col)
        for rank, item in enumerate(items, 1):
            table.add_row(str(rank), item["item_id"], f"{item['score']:.3f}", *([str(item.get("title", ""))] if titled else []))
        console.print(table)
