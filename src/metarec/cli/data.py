"""``metarec data fetch | describe | split``: get a dataset, look at it, look at its split."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from metarec.cli.options import (ATTRIBUTE_OPTION, COLUMN_OPTION, ITEMS_OPTION, RATING_SCALE_OPTION, USERS_OPTION,
                                 console, data_overrides, download_bar, errors, layered_run_config, print_json, scenario_table,
                                 split_of)
from metarec.cli.presets import PRESET_OPTION

data_app = typer.Typer(no_args_is_help=True, help="Datasets: fetch, describe, split.")

@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="ml-100k, ml-1m or lastfm"),
    cache: Optional[Path] = typer.Option(None, help="Cache folder (default: the OS cache, or $METAREC_CACHE_DIR)."),
) -> None:
    """Download a dataset from its official source into the cache, checking sha256."""
    with errors():
        from metarec.data.fetch import fetch_dataset

        with download_bar() as progress:
            bar = progress.add_task(f"downloading {name}", total=None)

            def report(done: int, total: int | None) -> None:
                progress.update(bar, completed=done, total=total)

            path = fetch_dataset(name, cache=cache, progress=report)
        console.print(f"{name}: {path}")


@data_app.command("describe")
def data_describe(
    dataset: str = typer.Argument(..., help="A dataset name or a path."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding the dataset (else $METAREC_DATA_DIR, else the cache)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Users, items, ratings, rating histogram, attribute columns, density."""
    with errors():
        from metarec.data import load_dataset

        info = load_dataset(dataset, data_dir=data_dir).describe()
        if as_json:
            print_json(info)
            return
        table = Table(title=f"{info['name']}", show_header=False)
        for key in ("users", "items", "ratings", "catalogue_items", "density", "rating_mean", "ratings_with_timestamp"):
            table.add_row(key, f"{info[key]:.6g}" if isinstance(info[key], float) else str(info[key]))
        table.add_row("rating histogram", ", ".join(f"{k}: {v}" for k, v in info["rating_histogram"].items()))
        table.add_row("user attributes", ", ".join(f"{k} ({v})" for k, v in info["user_attributes"].items()) or "none")
        table.add_row("item attributes", ", ".join(f"{k} ({v})" for k, v in info["item_attributes"].items()) or "none")
        console.print(table)


@data_app.command("split")
def data_split(
    dataset: Optional[str] = typer.Argument(None, help="A dataset name or a path [default: the --config's, else ml-100k]."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml: the split `metarec train --config` "
                                          "trains on (its [data] and [split])."),
    preset: Optional[str] = PRESET_OPTION,
    model: Optional[str] = typer.Option(None, help="As `metarec train --model`: a plain preset's split."),
    protocol: Optional[str] = typer.Option(None, help="melu (random query), time (latest ratings are the query) or "
                                           "splits [default: the config's]."),
    split_dir: Optional[Path] = typer.Option(None, help="With --protocol splits: a folder of published split files."),
    seed: Optional[int] = typer.Option(None, help="Seed of the user split and the query choice [default: the config's]."),
    query_size: Optional[int] = typer.Option(None, help="Query ratings per task."),
    support_size: Optional[int] = typer.Option(None, help="Fixed support size K for test tasks."),
    new_item_year: Optional[int] = typer.Option(None, help="Items released in or after this year are new."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding the dataset."),
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Per scenario: users, tasks, median support and query sizes, and every leakage check.

    The split is built exactly as `metarec train` builds it from the same --config / --preset / flags."""
    with errors():
        data = data_overrides(dataset, None if data_dir is None else str(data_dir), users, items, column, attribute,
                              rating_scale)
        cfg, _ = layered_run_config(config, preset, model, None, data, dict(
            protocol=protocol, seed=seed, split_dir=None if split_dir is None else str(split_dir),
            query_size=query_size, support_size=support_size, new_item_year=new_item_year))
        info = split_of(cfg).summary()
        if as_json:
            print_json(info)
            return
        table = scenario_table(f"{info['dataset']} - {cfg.split.protocol} protocol, seed {cfg.split.seed}",
                               ("users", "tasks", "ratings", "median support", "median query"))
        rows = [("meta-train", info["meta_train"])] + [(f"validation {k}", v) for k, v in info["validation"].items()]
        rows += list(info["scenarios"].items())
        for name, d in rows:
            table.add_row(name, str(d["users"]), str(d["tasks"]), str(d["ratings"]), f"{d['median_support']:g}", f"{d['median_query']:g}")
        console.print(table)
        console.print(f"new items: {info['items']['new']} ({info['items']['rule']}); old items: {info['items']['old']}")
        for check, ok in info["leakage_checks"].items():
            console.print(f"  {'[green]ok[/green]' if ok else '[red]FAILED[/red]'}  {check}")
        console.print(f"fingerprint {info['fingerprint']}")
