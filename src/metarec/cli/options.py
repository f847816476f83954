"""What the commands share: the consoles, one-line errors, progress bars, option parsing, a run folder."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

from metarec.errors import MetarecError

console = Console()
err_console = Console(stderr=True)
state = {"debug": False}  # set by the top-level --debug


@contextmanager
def errors() -> Iterator[None]:
    """Expected failures: one red line on stderr and exit code 1 (a traceback only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except (MetarecError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        if state["debug"]:
            raise
        message = str(exc) if not isinstance(exc, KeyError) or isinstance(exc, MetarecError) else str(exc.args[0])
        err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # "[train]" is text
        raise typer.Exit(1) from None


def print_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def process_threads(threads: int | None) -> None:
    """A command owns its process: a run's ``train.threads`` holds for all of it (fitting, scoring, the
    baselines), where the library's Trainer applies it only while it trains. None: torch's default."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def progress_bars() -> Progress:
    """Bars with N/M steps, time so far and an estimate of the time left (on a terminal only)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=False,
                    disable=not err_console.is_terminal)


def download_bar() -> Progress:
    """A byte-counting bar (size, speed, time left) for downloads."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=False, disable=not err_console.is_terminal)


def ints(text: str, flag: str) -> tuple[int, ...]:
    """``--flag 1,2,3`` as integers; at least one."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MetarecError(f"--{flag} {text!r}: expected comma-separated integers") from None
    if not values:
        raise MetarecError(f"--{flag}: at least one value is needed")
    return values


def words(text: Optional[str]) -> list[str]:
    """A comma-separated option as its non-empty, stripped entries (None: none)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def pairs(entries: List[str], flag: str, sep: str = "=", *, last: bool = False) -> dict[str, str]:
    """Repeated ``--flag KEY<sep>VALUE`` options as a dict (``last``: split at the last ``sep``, for keys
    that may contain it, such as item ids before ``:RATING``)."""
    out = {}
    for entry in entries:
        key, found, value = entry.rpartition(sep) if last else entry.partition(sep)
        if not found or not key.strip() or not value.strip():
            raise MetarecError(f"{flag} {entry!r}: expected KEY{sep}VALUE")
        out[key.strip()] = value.strip()
    return out


def history_limit(text: str | None) -> int | None:
    """``--history-max-new-support``: an integer K, or 'all' (None: every task gets the user's history);
    not given, the library's validation-chosen default."""
    if text is None:
        from metarec.tasks.history import HISTORY_MAX_NEW_SUPPORT

        return HISTORY_MAX_NEW_SUPPORT
    if text.strip().lower() == "all":
        return None
    try:
        limit = int(text)
    except ValueError:
        raise MetarecError(f"--history-max-new-support {text!r}: expected an integer or 'all'") from None
    if limit < 0:
        raise MetarecError(f"--history-max-new-support {text!r}: history_max_new_support must be >= 0")
    return limit


def history_rule(user_history: bool, history_max_new_support: int | None, history_as_prior: bool) -> str:
    """How a known (meta-train) user's history entered the scores, in words: ``metarec evaluate`` and the
    demo print it, so two numbers for the same run can be told apart by their rule."""
    if not user_history:
        return "not used (--no-user-history)"
    which = ("every task" if history_max_new_support is None
             else f"tasks with fewer than {history_max_new_support} new-item support ratings")
    where = "as the prior of the fold-in" if history_as_prior else "joined to the support set"
    return f"{which}, {where}"


def layered_run_config(config: Optional[Path], preset: Optional[str], model: Optional[str], algorithm: Optional[str],
                       data: dict, split: dict) -> tuple[Any, tuple[str, ...]]:
    """The run configuration (and the searched settings it fixes) of --config / --preset / --model /
    --algorithm plus the data and split flags: ``metarec train`` trains on it and ``metarec data split``
    shows it, through this one function, so the two never disagree about the split."""
    from metarec.meta.recipe import layered_config

    cfg, fixed = layered_config(config, preset, model, algorithm)
    return cfg.override("data", **data).override("split", **split), fixed


def split_of(cfg: Any) -> Any:
    """The split a run configuration trains and is evaluated on (its ``[data]`` and ``[split]``)."""
    from metarec.data.loaders.registry import load_data
    from metarec.tasks import make_split

    return make_split(load_data(cfg.data), cfg.split)


def load_run(run: Path) -> tuple[Any, Any]:
    """A model folder's split (rebuilt from its config) and checkpoint: a ``metarec train`` run folder or
    a ``rec.save()`` folder alike (:func:`metarec.serve.bundle.read_run`, the loader every command shares)."""
    from metarec.serve.bundle import read_run

    return read_run(run)


def scenario_table(title: str, columns: tuple[str, ...]) -> Table:
    """A table of one row per scenario: its name first (left, unwrapped), then right-aligned numbers."""
    table = Table(title=title)
    table.add_column("scenario", justify="left", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right")
    return table


def titles(items: Any) -> dict[str, str]:
    """Item id -> title of an items table (empty without a title column), for display."""
    return items["title"].astype(str).to_dict() if "title" in items.columns else {}


# your own tables: the same options for train and benchmark
DATASET_OPTION = typer.Option(None, "--dataset", help="Dataset name, or your interactions table (CSV / TSV / Parquet).")
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="Folder holding the dataset.")
PROTOCOL_OPTION = typer.Option(None, "--protocol", help="melu, time or splits.")
SPLIT_DIR_OPTION = typer.Option(None, "--split-dir", help="With --protocol splits: a folder of published split files.")
USERS_OPTION = typer.Option(None, "--users", help="A table of user attributes (with --dataset TABLE).")
ITEMS_OPTION = typer.Option(None, "--items", help="A table of item attributes (with --dataset TABLE).")
COLUMN_OPTION = typer.Option([], "--column", help="ROLE=NAME: the table's column for user, item, rating or timestamp, "
                                                  "e.g. --column user=userId; repeatable.")
ATTRIBUTE_OPTION = typer.Option([], "--attribute", help="COLUMN=KIND (categorical, multi, numeric, text): e.g. "
                                                        "--attribute author=categorical; items.COLUMN for one table; "
                                                        "repeatable.")
RATING_SCALE_OPTION = typer.Option(None, help="LOW,HIGH of your table's ratings [default: observed].")
# a known user's history: the same options for evaluate and benchmark
USER_HISTORY_OPTION = typer.Option(True, help="Adapt a meta-train user (warm, new items) on their meta-train ratings "
                                              "too, as bias and MF use trained user parameters.")
HISTORY_MAX_NEW_SUPPORT_OPTION = typer.Option(
    None, help="With the user's history: only tasks with fewer support ratings of new items than this get it; "
               "'all': every task gets it [default: all, chosen on validation users].")
HISTORY_AS_PRIOR_OPTION = typer.Option(
    True, "--history-as-prior/--history-in-support",
    help="With the user's history, in a task with new-item support ratings: the history sets the prior the support "
         "is folded in around (neural-cf with fold_in), instead of joining the support of another kind of item "
         "[default: as prior, chosen on validation users].")


def data_overrides(dataset: Optional[str], data_dir: Optional[str], users: Optional[str], items: Optional[str],
                   columns: List[str], attributes: List[str], rating_scale: Optional[str]) -> dict:
    """``[data]`` values from the command line (None / empty: not given)."""
    scale = None
    if rating_scale is not None:
        try:
            low, high = (float(x) for x in rating_scale.split(","))
        except ValueError:
            raise MetarecError(f"--rating-scale {rating_scale!r}: expected LOW,HIGH") from None
        scale = [low, high]
    values = dict(dataset=dataset, data_dir=data_dir, users=users, items=items, rating_scale=scale,
                  columns=pairs(columns, "--column") or None, attributes=pairs(attributes, "--attribute") or None)
    return {k: v for k, v in values.items() if v is not None}


# the catalogue top-k: the same options for serve and recommend
TOP_K_OPTION = typer.Option("exact", "--top-k", help="exact (score every item) or approximate (a faiss HNSW index, "
                                                     "neural-cf models; needs metarec[ann]).")
HNSW_OPTION = typer.Option([], "--hnsw", help="KEY=VALUE of the approximate index: m, ef_construction, ef_search, seed, "
                                              "build_threads, max_stale, metric (ip or l2); repeatable.")


def top_k_settings(top_k: str, hnsw: List[str]) -> tuple[str, Any]:
    """``(mode, HNSWConfig or None)`` checked before the model loads: a wrong mode or setting, or a missing
    faiss, fails in one line without the seconds a load takes."""
    from metarec.serve.topk import HNSWConfig, check_top_k

    check_top_k(top_k)
    if hnsw and top_k != "approximate":
        raise MetarecError("--hnsw sets the approximate index: give it with --top-k approximate")
    return top_k, HNSWConfig.from_mapping(pairs(hnsw, "--hnsw")) if hnsw else None
