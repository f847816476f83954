"""``metarec recommend``: adapt to a new user's ratings and print the top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from metarec.cli.options import (HNSW_OPTION, TOP_K_OPTION, console, err_console, errors, pairs, print_json,
                                 top_k_settings)
from metarec.cli.recommend_batch import recommend_batch
from metarec.errors import MetarecError


def recommend(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`, or a saved recommender."),
    rate: List[str] = typer.Option([], "--rate", help="ITEM_ID:RATING, repeatable (one new user)."),
    item: List[str] = typer.Option([], "--item", help="ITEM_ID the new user interacted with or liked, repeatable "
                                   "(a model trained with --feedback implicit; no ratings)."),
    k: int = typer.Option(10, help="How many items (at least 1)."),
    user: List[str] = typer.Option([], "--user", help="ATTRIBUTE=VALUE of the new user, repeatable."),
    include_rated: bool = typer.Option(False, "--include-rated", help="Allow already rated items."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    input_path: Optional[Path] = typer.Option(None, "--input", help="Many users: a JSON-lines file, each line the "
                                              "body of POST /v1/recommend (plus an optional user_id)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --input: the table to write, one row per (user_id, "
                                       "rank, item_id, score): .parquet, .csv or .jsonl."),
    top_k: str = TOP_K_OPTION,
    hnsw: List[str] = HNSW_OPTION,
) -> None:
    """Adapt to a new user's ratings and print the top-k; with --input and --out, every user of a file."""
    with errors():
        mode, hnsw_config = top_k_settings(top_k, hnsw)  # before the model loads, as the checks below

        def load(folder: Path) -> Any:
            return load_for_recommend(folder, mode, hnsw_config)

        if input_path is not None or out is not None:
            return recommend_batch(load, run, input_path, out, bool(rate or item or user))
        if not rate and not item:
            raise typer.BadParameter("give the new user's ratings (--rate ITEM_ID:RATING), their items (--item ITEM_ID, "
                                     "an implicit-feedback model), or --input and --out")
        if rate and item:
            raise typer.BadParameter("--rate (ratings) and --item (an implicit model's positives) do not go together")
        if k < 1:  # before the model loads: a wrong flag should not cost seconds
            raise MetarecError(f"--k {k}: k must be a positive integer")
        support = list(dict.fromkeys(i.strip() for i in item)) if item else pairs(rate, "--rate", ":", last=True)
        attributes = pairs(user, "--user")
        recommender = load(run)
        if recommender.feedback == "implicit" and rate:
            raise MetarecError(f"{run} was trained on implicit feedback: give the user's items with --item ITEM_ID, "
                               "not ratings")
        if recommender.feedback == "explicit" and item:
            raise MetarecError(f"{run} predicts ratings: give the user's ratings with --rate ITEM_ID:RATING "
                               "(--item is for implicit-feedback models)")
        result = recommender.recommend_records(support, attributes or None, k=k, exclude_rated=not include_rated)
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


def load_for_recommend(run: Path, top_k: str = "exact", hnsw: Any = None) -> Any:
    """The recommender of a run folder with only what a top-k needs: the checkpoint and the item titles.

    Loading the run's whole dataset (and rebuilding its split, for onboarding's popularity and panel)
    only to show titles took most of the command's time; where the items file can be read alone
    (ML-100K, ML-1M) it is. A saved recommender, a checkpoint folder or other data load as before.
    ``top_k`` / ``hnsw``: the catalogue top-k (:mod:`metarec.serve.topk`)."""
    from metarec.serve import ColdStartRecommender

    saved = (run / "recommender.json").exists() or (run / "checkpoint.json").exists()
    if saved or not (run / "config.toml").is_file():
        return ColdStartRecommender.load(run, replicas=1, top_k=top_k, hnsw=hnsw)
    from metarec.data.loaders.registry import load_items
    from metarec.meta.run import RunConfig

    try:
        items = load_items(RunConfig.from_toml(run / "config.toml").data)
    except (MetarecError, OSError, ValueError):  # the data moved or was never here: ids only, as before
        items = None
    if items is None:
        return ColdStartRecommender.load(run, replicas=1, top_k=top_k, hnsw=hnsw)
    from metarec.meta.trainer import load_best

    return ColdStartRecommender(load_best(run), items=items, replicas=1, top_k=top_k, hnsw=hnsw)
