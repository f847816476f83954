"""``metarec recommend``: adapt to a new user's ratings and print the top-k."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from metarec.cli.options import console, err_console, errors, pairs, print_json


def recommend(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`, or a saved recommender."),
    rate: List[str] = typer.Option(..., "--rate", help="ITEM_ID:RATING, repeatable."),
    k: int = typer.Option(10, help="How many items."),
    user: List[str] = typer.Option([], "--user", help="ATTRIBUTE=VALUE of the new user, repeatable."),
    include_rated: bool = typer.Option(False, "--include-rated", help="Allow already rated items."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Adapt to a new user's ratings and print the top-k."""
    with errors():
        from metarec.serve import ColdStartRecommender

        ratings = pairs(rate, "--rate", ":", last=True)
        attributes = pairs(user, "--user")
        recommender = ColdStartRecommender.load(run, replicas=1)  # titles from the run's dataset, when it loads
        result = recommender.recommend_records(ratings, attributes or None, k=k, exclude_rated=not include_rated)
        if as_json:
            print_json({"items": result.items, "unknown_item_ids": result.unknown_item_ids})
            return
        if result.unknown_item_ids:
            err_console.print(f"ignored unknown item ids: {', '.join(result.unknown_item_ids)}")
        titled = any(item.get("title") for item in result.items)  # an id-only dataset has no titles
        table = Table()
        for col in ("rank", "item_id", "score", *(["title"] if titled else [])):
            table.add_column(col)
        for rank, item in enumerate(result.items, 1):
            table.add_row(str(rank), item["item_id"], f"{item['score']:.3f}", *([str(item.get("title", ""))] if titled else []))
        console.print(table)
