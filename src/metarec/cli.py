"""The ``metarec`` command line. The only module that prints; errors become one line and exit code 1."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metarec.errors import MetarecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Cold-start recommendation by meta-learning.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: fetch, describe, split.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def _errors() -> Iterator[None]:
    """Expected failures: one red line on stderr and exit code 1 (a traceback only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except (MetarecError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        if _state["debug"]:
            raise
        message = str(exc) if not isinstance(exc, KeyError) or isinstance(exc, MetarecError) else str(exc.args[0])
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _print_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False, disable=not err_console.is_terminal)


# ---------------------------------------------------------------------- data
@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="ml-100k, ml-1m or lastfm"),
    cache: Optional[Path] = typer.Option(None, help="Cache folder (default: the OS cache, or $METAREC_CACHE_DIR)."),
) -> None:
    """Download a dataset from its official source into the cache, checking sha256."""
    with _errors():
        from metarec.data.fetch import fetch_dataset

        path = fetch_dataset(name, cache=cache, progress=True)
        console.print(f"{name}: {path}")


@data_app.command("describe")
def data_describe(
    dataset: str = typer.Argument(..., help="A dataset name or a path."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding the dataset (else $METAREC_DATA_DIR, else the cache)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Users, items, ratings, rating histogram, attribute columns, density."""
    with _errors():
        from metarec.data import load_dataset

        info = load_dataset(dataset, data_dir=data_dir).describe()
        if as_json:
            _print_json(info)
            return
        table = Table(title=f"{info['name']}", show_header=False)
        for key in ("users", "items", "ratings", "catalogue_items", "density", "rating_mean", "ratings_with_timestamp"):
            table.add_row(key, f"{info[key]:.6g}" if isinstance(info[key], float) else str(info[key]))
        table.add_row("rating histogram", ", ".join(f"{k}: {v}" for k, v in info["rating_histogram"].items()))
        table.add_row("user attributes", ", ".join(f"{k} ({v})" for k, v in info["user_attributes"].items()) or "none")
        table.add_row("item attributes", ", ".join(f"{k} ({v})" for k, v in info["item_attributes"].items()) or "none")
        console.print(table)


def _split_config(protocol: str, seed: int, query_size: int, support_size: Optional[int], new_item_year: Optional[int],
                  split_dir: Optional[Path] = None):
    from metarec.tasks import SplitConfig

    return SplitConfig(protocol=protocol, seed=seed, query_size=query_size, support_size=support_size,
                       new_item_year=new_item_year, split_dir=None if split_dir is None else str(split_dir))


@data_app.command("split")
def data_split(
    dataset: str = typer.Argument(..., help="A dataset name or a path."),
    protocol: str = typer.Option("melu", help="melu (random query), time (latest ratings are the query) or splits."),
    split_dir: Optional[Path] = typer.Option(None, help="With --protocol splits: a folder of published split files."),
    seed: int = typer.Option(0, help="Seed of the user split and the query choice."),
    query_size: int = typer.Option(10, help="Query ratings per task."),
    support_size: Optional[int] = typer.Option(None, help="Fixed support size K for test tasks."),
    new_item_year: Optional[int] = typer.Option(None, help="Items released in or after this year are new."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding the dataset."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Per scenario: users, tasks, median support and query sizes, and every leakage check."""
    with _errors():
        from metarec.data import load_dataset
        from metarec.tasks import make_split

        split = make_split(load_dataset(dataset, data_dir=data_dir),
                           _split_config(protocol, seed, query_size, support_size, new_item_year, split_dir))
        info = split.summary()
        if as_json:
            _print_json(info)
            return
        table = Table(title=f"{info['dataset']} - {protocol} protocol, seed {seed}")
        for col in ("scenario", "users", "tasks", "ratings", "median support", "median query"):
            table.add_column(col, justify="right" if col != "scenario" else "left", no_wrap=col == "scenario")
        rows = [("meta-train", info["meta_train"])] + [(f"validation {k}", v) for k, v in info["validation"].items()]
        rows += list(info["scenarios"].items())
        for name, d in rows:
            table.add_row(name, str(d["users"]), str(d["tasks"]), str(d["ratings"]), f"{d['median_support']:g}", f"{d['median_query']:g}")
        console.print(table)
        console.print(f"new items: {info['items']['new']} ({info['items']['rule']}); old items: {info['items']['old']}")
        for check, ok in info["leakage_checks"].items():
            console.print(f"  {'[green]ok[/green]' if ok else '[red]FAILED[/red]'}  {check}")
        console.print(f"fingerprint {info['fingerprint']}")


# ---------------------------------------------------------------------- training
# your own tables: the same options for train and benchmark
USERS_OPTION = typer.Option(None, "--users", help="A table of user attributes (with --dataset TABLE).")
ITEMS_OPTION = typer.Option(None, "--items", help="A table of item attributes (with --dataset TABLE).")
COLUMN_OPTION = typer.Option([], "--column", help="ROLE=NAME: the table's column for user, item, rating or timestamp, "
                                                  "e.g. --column user=userId; repeatable.")
ATTRIBUTE_OPTION = typer.Option([], "--attribute", help="COLUMN=KIND (categorical, multi, numeric, text): e.g. "
                                                        "--attribute author=categorical; items.COLUMN for one table; "
                                                        "repeatable.")
RATING_SCALE_OPTION = typer.Option(None, help="LOW,HIGH of your table's ratings [default: observed].")


def _data_overrides(dataset: Optional[str], data_dir: Optional[str], users: Optional[str], items: Optional[str],
                    columns: List[str], attributes: List[str], rating_scale: Optional[str]) -> dict:
    """``[data]`` values from the command line (None / empty: not given)."""
    def pairs(entries: List[str], flag: str) -> dict[str, str]:
        out = {}
        for entry in entries:
            key, sep, value = entry.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise MetarecError(f"{flag} {entry!r}: expected NAME=VALUE")
            out[key.strip()] = value.strip()
        return out

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


def _run_config(config: Optional[Path], preset: Optional[str], model: Optional[str], algorithm: Optional[str]):
    """The base configuration and the searched settings it fixes: ``--model`` / ``--algorithm`` give a
    plain preset (no recipe, nothing searched); otherwise the recipe's base with ``--preset``'s and then
    ``--config``'s values on top (what they set is fixed)."""
    from metarec.meta.recipe import SEARCH_SPACE, config_over_recipe, load_toml_values, preset_dict
    from metarec.meta.run import RunConfig

    if model is not None or algorithm is not None:
        if config is not None:
            cfg = RunConfig.from_toml(config)
            base = RunConfig.preset(model or cfg.model.kind, algorithm)
            cfg = RunConfig(cfg.data, cfg.split, base.model if model else cfg.model, base.meta if algorithm else cfg.meta, cfg.train)
        else:
            cfg = RunConfig.preset(model or "feature-mlp", algorithm)
        return cfg, tuple(f"{s}.{k}" for s, k, _ in SEARCH_SPACE)
    values: dict = {}
    for layer in ([preset_dict(preset)] if preset else []) + ([load_toml_values(config)] if config else []):
        for section, entries in layer.items():
            values.setdefault(section, {}).update(entries)
    return config_over_recipe(values)


def _train_flags_fix(outer_lr, query_loss, item_id_embedding, item_id_residual) -> tuple[str, ...]:
    """Searched settings a command-line flag sets: the recipe leaves them as given."""
    fixed = []
    if outer_lr is not None:
        fixed.append("meta.outer_lr")
    if query_loss is not None:
        fixed.append("meta.query_loss")
    if item_id_embedding is not None or item_id_residual is not None:
        fixed.append("model.item_ids")
    return tuple(fixed)


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run folder (config, metrics.jsonl, checkpoints, recipe.json)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml whose values override the recipe; "
                                          "the searched settings it sets are not searched."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A preset shipped with metarec (e.g. maml-gd), "
                                         "applied under --config."),
    search: bool = typer.Option(True, "--search/--no-search", help="Choose the dataset-dependent settings on "
                                "validation users (outer lr, item ids, id dropout, query loss) [default: search]."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name, or your interactions table (CSV / TSV / Parquet)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset."),
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    protocol: Optional[str] = typer.Option(None, help="melu, time or splits."),
    split_dir: Optional[str] = typer.Option(None, help="With --protocol splits: a folder of published split files."),
    model: Optional[str] = typer.Option(None, help="feature-mlp, neural-cf, attention or melu: a plain preset "
                                        "instead of the recipe (no search)."),
    algorithm: Optional[str] = typer.Option(None, help="maml, fomaml, reptile or metasgd (a plain preset, no search)."),
    adapt: Optional[str] = typer.Option(None, help="Parameters adapted per user: all, head or embeddings."),
    inner_steps: Optional[int] = typer.Option(None, help="Inner gradient steps."),
    inner_lr: Optional[float] = typer.Option(None, help="Inner learning rate alpha."),
    outer_lr: Optional[float] = typer.Option(None, help="Outer (Adam) learning rate beta (not searched then)."),
    l2: Optional[float] = typer.Option(None, help="L2 weight lambda on the meta-parameters."),
    meta_batch_size: Optional[int] = typer.Option(None, help="Tasks per meta-batch."),
    query_loss: Optional[str] = typer.Option(None, help="Outer loss on the query set: squared, absolute or huber."),
    item_id_embedding: Optional[bool] = typer.Option(None, "--item-ids/--no-item-ids", help="Learn id vectors of warm items."),
    item_id_residual: Optional[bool] = typer.Option(
        None, "--item-id-residual/--item-id-input",
        help="neural-cf: add item id vectors to the item tower's output (a new item's vector is then the "
             "attributes' prediction) instead of feeding them into it."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs."),
    patience: Optional[int] = typer.Option(None, help="Epochs without validation improvement before stopping."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split, the initialisation and the batch order."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Meta-train a model; the best checkpoint on validation users goes to RUNDIR/best.

    By default the automatic recipe chooses the settings that differ between datasets on validation users
    (recorded in RUNDIR/recipe.json); --config / flags fix what they set."""
    with _errors():
        from metarec.meta.run import RunConfig
        from metarec.meta.trainer import Trainer

        if resume:
            cfg = RunConfig.from_toml(out / "config.toml")
            search = False
        else:
            cfg, fixed = _run_config(config, preset, model, algorithm)
            search = search and model is None and algorithm is None  # a plain preset is trained as it is
            fixed = (*fixed, *_train_flags_fix(outer_lr, query_loss, item_id_embedding, item_id_residual))
            data = _data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
            cfg = cfg.override("data", **data)
            cfg = cfg.override("split", protocol=protocol, seed=seed, split_dir=split_dir)
            cfg = cfg.override("model", item_id_embedding=item_id_embedding, item_id_residual=item_id_residual)
            cfg = cfg.override("meta", adapt=adapt, inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr, l2=l2,
                               meta_batch_size=meta_batch_size, query_loss=query_loss)
            cfg = cfg.override("train", epochs=epochs, patience=patience, seed=seed, device=device)
        if device and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise MetarecError(f"--device {device}: CUDA is not available on this machine")
        with _progress() as progress:
            if search and not resume:
                from metarec._atomic import write_json
                from metarec.data.loaders.registry import load_data
                from metarec.meta.recipe import choose_recipe
                from metarec.tasks import make_split

                split = make_split(load_data(cfg.data), cfg.split)
                bar = progress.add_task("choosing the recipe on validation users (trainings)", total=None)

                def step(description: str, done: int, total: int) -> None:
                    progress.update(bar, completed=done, total=total)

                chosen = choose_recipe(split, cfg, fixed=fixed, progress=step)
                trainer = chosen.trainer
                trainer.write_run(out)
                write_json(out / "recipe.json", chosen.to_dict())
                state = trainer.state
                console.print("recipe (chosen on validation users): "
                              + ", ".join(f"{k} = {v}" for k, v in min(chosen.trials, key=lambda t: t.val_score)
                                          .settings.items()), highlight=False)
                console.print(f"best epoch {state['best_epoch']}: validation score {state['best_val_mae']:.4f} "
                              f"({state['epoch']} epochs, {len(chosen.trials)} trials); run folder {out}")
                return
            bar = progress.add_task("meta-training", total=None)
            epochs_bar = progress.add_task("epochs", total=cfg.train.epochs)

            def report(stage: str, done: int, total: int) -> None:
                if stage == "train":
                    progress.update(bar, completed=done, total=total)
                else:
                    progress.update(epochs_bar, completed=done)

            trainer = Trainer(cfg, run_dir=out, progress=report)
            if resume:
                trainer.resume(out / "last")
            result = trainer.fit()
        console.print(f"best epoch {result.best_epoch}: validation MAE {result.best_val_mae:.4f} "
                      f"({result.epochs_run} epochs); run folder {out}")


def _history_limit(text: str | None) -> int | None:
    """``--history-max-new-support``: an integer K, or 'all' (None: every task gets the user's history);
    not given, the library's validation-chosen default."""
    if text is None:
        from metarec.tasks.splits import HISTORY_MAX_NEW_SUPPORT

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


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`."),
    steps: Optional[int] = typer.Option(None, help="Inner steps at test time (default: the run's)."),
    user_history: bool = typer.Option(True, help="Adapt a meta-train user (warm, new items) on their meta-train "
                                                 "ratings too, as `metarec benchmark` does."),
    history_max_new_support: Optional[str] = typer.Option(
        None, help="As `metarec benchmark`: only tasks with fewer support ratings of new items get the history; "
                   "'all': every task [default: all]."),
    history_as_prior: bool = typer.Option(
        True, "--history-as-prior/--history-in-support",
        help="As `metarec benchmark`: in a task with new-item support ratings, the history sets the prior."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """MAE and RMSE per test scenario, with and without adaptation, on the run's own split."""
    with _errors():
        from metarec.data.loaders.registry import load_data
        from metarec.meta.run import RunConfig
        from metarec.meta.trainer import evaluate_run, load_best
        from metarec.tasks import make_split

        cfg = RunConfig.from_toml(run / "config.toml")
        ckpt = load_best(run)
        split = make_split(load_data(cfg.data), cfg.split)
        results = evaluate_run(ckpt, split, steps, user_history=user_history,
                               history_max_new_support=_history_limit(history_max_new_support),
                               history_as_prior=history_as_prior)
        if as_json:
            _print_json(results)
            return
        table = Table(title=f"{run} - best epoch {ckpt.state.get('best_epoch')}")
        for col in ("scenario", "tasks", "MAE", "RMSE", "MAE (no adaptation)", "RMSE (no adaptation)"):
            table.add_column(col, justify="right" if col != "scenario" else "left", no_wrap=col == "scenario")
        for name, m in results.items():
            table.add_row(name, str(m["tasks"]), f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['mae_no_adapt']:.4f}", f"{m['rmse_no_adapt']:.4f}")
        console.print(table)


@app.command()
def recommend(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`."),
    rate: List[str] = typer.Option(..., "--rate", help="ITEM_ID:RATING, repeatable."),
    k: int = typer.Option(10, help="How many items."),
    user: List[str] = typer.Option([], "--user", help="ATTRIBUTE=VALUE of the new user, repeatable."),
    include_rated: bool = typer.Option(False, "--include-rated", help="Allow already rated items."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Adapt to a new user's ratings and print the top-k."""
    with _errors():
        from metarec.meta.personalize import Personalizer

        ratings = {}
        for entry in rate:
            item, sep, value = entry.rpartition(":")
            if not sep or not item:
                raise MetarecError(f"--rate {entry!r}: expected ITEM_ID:RATING")
            ratings[item] = value
        attributes = {}
        for entry in user:
            key, sep, value = entry.partition("=")
            if not sep:
                raise MetarecError(f"--user {entry!r}: expected ATTRIBUTE=VALUE")
            attributes[key] = value
        personalizer = Personalizer.load(run)
        adapted = personalizer.adapt(ratings, attributes or None)
        top = adapted.recommend(k, exclude_rated=not include_rated)
        titles = _titles(run)
        if as_json:
            _print_json({"items": [{"item_id": i, "score": s, **({"title": titles[i]} if i in titles else {})} for i, s in top],
                         "unknown_item_ids": adapted.unknown_item_ids})
            return
        if adapted.unknown_item_ids:
            err_console.print(f"ignored unknown item ids: {', '.join(adapted.unknown_item_ids)}")
        table = Table()
        for col in ("rank", "item_id", "score", "title"):
            table.add_column(col)
        for rank, (item, score) in enumerate(top, 1):
            table.add_row(str(rank), item, f"{score:.3f}", titles.get(item, ""))
        console.print(table)


def _titles(run: Path) -> dict[str, str]:
    """Item titles from the run's dataset, when it can be loaded (display only)."""
    try:
        from metarec.data.loaders.registry import load_data
        from metarec.meta.run import RunConfig

        cfg = RunConfig.from_toml(run / "config.toml")
        items = load_data(cfg.data).items
        return items["title"].astype(str).to_dict() if "title" in items.columns else {}
    except Exception as exc:  # noqa: BLE001 - titles are optional decoration, but say why they are missing
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err_console.print(f"no titles: the run's dataset could not be loaded ({first[:160]})", highlight=False)
        return {}


@app.command()
def benchmark(
    out: Path = typer.Option(..., "--out", help="Folder for results.csv / .json / .md and the plots."),
    dataset: str = typer.Option("ml-100k", help="Dataset name or path."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset."),
    protocol: str = typer.Option("melu", help="melu, time or splits."),
    split_dir: Optional[str] = typer.Option(None, help="With --protocol splits: the published split files."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (each: a split and an initialisation)."),
    split_seed: Optional[int] = typer.Option(None, help="Score every seed on this seed's split: the seeds then vary "
                                             "only the training (initialisation, task order) [default: each its own]."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml whose values override the meta-learner's "
                                          "recipe; the searched settings it sets are not searched."),
    search: bool = typer.Option(True, "--search/--no-search", help="The meta-learner's recipe chosen on each seed's "
                                "validation users [default: search]."),
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    support_draws: int = typer.Option(3, help="Seeded draws of the K support ratings per test task (averaged)."),
    heavy_users: Optional[str] = typer.Option(None, help="drop (MeLU) or chunk: users above 100 ratings feed meta-training "
                                               "[default: the config's [split] heavy_users, else drop]."),
    support_sizes: str = typer.Option("1,3,5,10,20", help="Support sizes K of the K-curves."),
    user_history: bool = typer.Option(True, help="Meta-learners adapt a meta-train user (warm, new items) on their "
                                                 "meta-train ratings too, as bias and MF use trained user parameters."),
    history_max_new_support: Optional[str] = typer.Option(
        None, help="With the user's history: only tasks with fewer support ratings of new items than this get it; "
                   "'all': every task gets it [default: all, chosen on validation users]."),
    history_as_prior: bool = typer.Option(
        True, "--history-as-prior/--history-in-support",
        help="With the user's history, in a task with new-item support ratings: the history sets the prior the "
             "support is folded in around (neural-cf with fold_in), instead of joining the support of another "
             "kind of item [default: as prior, chosen on validation users]."),
    item_fold_in: bool = typer.Option(False, "--item-fold-in", help="Also score the new-item scenarios with new "
                                      "items folded in from every test task's support ratings (<scenario>_pooled)."),
    epochs: Optional[int] = typer.Option(None, help="Override the meta-learners' maximum epochs."),
    quick: bool = typer.Option(False, "--quick", help="A small version (CI): 2 seeds, few methods, 2 epochs."),
) -> None:
    """Every method x scenario x metric over seeds, mean +- 95% CI, paired bootstrap, plots."""
    with _errors():
        from metarec.eval.benchmark import DEFAULT_METHODS, BenchmarkConfig, run_benchmark, write_results
        from metarec.meta.run import RunConfig

        def ints(text: str, what: str) -> tuple[int, ...]:
            try:
                return tuple(int(x) for x in text.split(",") if x.strip())
            except ValueError:
                raise MetarecError(f"--{what} {text!r}: expected comma-separated integers") from None

        from metarec.meta.recipe import config_over_recipe, load_toml_values

        run_config, fixed = config_over_recipe(load_toml_values(config) if config else None)
        data = _data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
        run_config = run_config.override("data", **data)
        if epochs is not None:
            run_config = run_config.override("train", epochs=epochs)
        table = run_config.data if run_config.data.is_table else None
        options = dict(dataset=dataset, data_dir=data_dir, protocol=protocol, split_dir=split_dir, heavy_users=heavy_users,
                       user_history=user_history, history_max_new_support=_history_limit(history_max_new_support),
                       history_as_prior=history_as_prior, item_fold_in=item_fold_in, split_seed=split_seed,
                       data=table)
        if quick:
            cfg = BenchmarkConfig.quick(**options)
        else:
            cfg = BenchmarkConfig(seeds=ints(seeds, "seeds"), support_sizes=ints(support_sizes, "support-sizes"),
                                  methods=tuple(m.strip() for m in methods.split(",")) if methods else DEFAULT_METHODS,
                                  run=run_config, search=search, fixed=fixed, support_draws=support_draws, **options)
        started = time.perf_counter()

        def report(status, msg: str) -> None:
            status.update(f"benchmark: {msg}")
            if not err_console.is_terminal:  # a log file gets one line per step instead of a spinner
                err_console.print(f"benchmark: {msg} (at {time.perf_counter() - started:.0f} s)", highlight=False)

        with err_console.status("benchmark") as status:
            result = run_benchmark(cfg, progress=lambda msg: report(status, msg))
        paths = write_results(result, out)
        console.print(paths["md"].read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"wrote {out} in {result.seconds:.0f} s")


@app.command()
def onboard(
    run: Path = typer.Argument(..., help="A run folder written by `metarec train`."),
    n: int = typer.Option(10, "--n", min=1, help="How many items to ask a new user to rate."),
    strategy: str = typer.Option("adaptive", help="adaptive (chosen on validation users: it asks in rounds, each from "
                                                  "the answers so far), popular, pop-entropy, melu-evidence, "
                                                  "greedy-info, greedy-error or coverage; see docs/onboarding.md."),
    shown: Optional[str] = typer.Option(None, "--shown", help="Comma-separated ids of the items already shown: the "
                                                              "next round leaves them out (and adapts to them)."),
    rated: Optional[str] = typer.Option(None, "--rated", help="Comma-separated ids of the shown items the user rated."),
    experiment: bool = typer.Option(False, "--experiment", help="Compare the strategies on held-out users instead."),
    budgets: str = typer.Option("10,20,50", help="--experiment: comma-separated budgets (items shown, or answers "
                                                 "with --protocol walk)."),
    protocol: str = typer.Option("shown", help="--experiment: shown (the first m items are shown, the user rates "
                                               "those they know) or walk (shown until n answers)."),
    users: str = typer.Option("test", help="--experiment: test, or validation (to choose strategy and budget)."),
    seeds: str = typer.Option("0,1,2", help="--experiment: seeds of the random questionnaire."),
    strategies: Optional[str] = typer.Option(None, help="--experiment: comma-separated strategies (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="--experiment: also write rows and summary as CSV here."),
    pool_runs: Optional[List[Path]] = typer.Option(None, "--pool-run", help="--experiment: another run (e.g. another "
                                                   "split seed) whose held-out users join the comparison; repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The items to ask a new user to rate first; with --experiment, what each strategy buys on held-out users."""
    with _errors():
        from metarec.data.loaders.registry import load_data
        import numpy as np

        from metarec.eval.onboarding import (PROTOCOLS, STRATEGIES, adaptive_questionnaire, choose_items,
                                             onboarding_experiment, pool_results, summarise)
        from metarec.meta.run import RunConfig
        from metarec.meta.trainer import load_best
        from metarec.tasks import make_split

        def ints(text: str, what: str) -> tuple[int, ...]:
            try:
                values = tuple(int(x) for x in text.split(",") if x.strip())
            except ValueError:
                raise MetarecError(f"--{what} {text!r}: expected comma-separated integers") from None
            if not values:
                raise MetarecError(f"--{what}: at least one value is needed")
            return values

        if users not in ("test", "validation"):
            raise MetarecError(f"--users {users!r}: expected test or validation")
        if protocol not in PROTOCOLS:
            raise MetarecError(f"--protocol {protocol!r}: expected {' or '.join(PROTOCOLS)}")
        chosen_strategies = tuple(x.strip() for x in strategies.split(",") if x.strip()) if strategies else STRATEGIES
        for name in (*chosen_strategies, *(() if experiment else (strategy,))):
            if name not in STRATEGIES:
                raise MetarecError(f"unknown onboarding strategy {name!r}; known: {', '.join(STRATEGIES)}")
        budget_values, seed_values = ints(budgets, "budgets"), ints(seeds, "seeds")
        cfg = RunConfig.from_toml(run / "config.toml")
        dataset = load_data(cfg.data)
        split = make_split(dataset, cfg.split)
        learner = load_best(run).learner
        if not experiment:
            titles = dataset.items["title"].astype(str).to_dict() if "title" in dataset.items.columns else {}
            asked = {}
            for name, text in (("shown", shown), ("rated", rated)):
                values = [x.strip() for x in (text or "").split(",") if x.strip()]
                index = dataset.item_vocab.indices(values, strict=False)
                if (index < 0).any():
                    raise MetarecError(f"--{name}: unknown item id(s) {[v for v, i in zip(values, index) if i < 0][:5]}")
                asked[name] = index
            if strategy == "adaptive":
                picks = adaptive_questionnaire(split).next_items(asked["shown"], asked["rated"], n)
            else:  # a fixed list: the next items of it not shown yet
                order = choose_items(strategy, split, learner, len(dataset.item_vocab))
                picks = order[~np.isin(order, np.r_[asked["shown"], asked["rated"]])][:n]
            ids = [dataset.item_vocab.ids[i] for i in picks]
            items = [{"item_id": i, "title": titles.get(i, "")} for i in ids]
            if as_json:
                _print_json({"strategy": strategy, "items": items})
                return
            table = Table(title=f"Ask a new user to rate ({strategy})")
            for col in ("#", "item_id", "title"):
                table.add_column(col)
            for i, item in enumerate(items, 1):
                table.add_row(str(i), item["item_id"], item["title"])
            console.print(table)
            return
        runs = [(run, split, learner)]
        for other in pool_runs or []:
            other_cfg = RunConfig.from_toml(other / "config.toml")
            other_split = make_split(load_data(other_cfg.data), other_cfg.split)
            runs.append((other, other_split, load_best(other).learner))
        results = []
        with _progress() as progress:
            for run_dir, run_split, run_learner in runs:
                bar = progress.add_task(f"onboarding experiment {run_dir.name}", total=None)
                results.append(onboarding_experiment(
                    run_learner, run_split, validation=users == "validation", budgets=budget_values,
                    strategies=chosen_strategies, protocol=protocol, seeds=seed_values,
                    progress=lambda step, done, total, bar=bar: progress.update(
                        bar, description=f"onboarding: {step}", completed=done, total=total)))
        result = pool_results(results) if len(results) > 1 else results[0]
        summary = summarise(result)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            result.rows.to_csv(out / f"onboarding_{users}_{protocol}_rows.csv", index=False)
            summary.to_csv(out / f"onboarding_{users}_{protocol}_summary.csv", index=False)
        if as_json:
            _print_json({"users": users, "scenario": result.scenario, "protocol": protocol,
                         "rows": result.rows.to_dict(orient="records"), "summary": summary.to_dict(orient="records")})
            return
        n_users = sum(int(r.rows["users"].iloc[0]) for r in results)
        budget_name = "items shown" if protocol == "shown" else "answers wanted"
        table = Table(title=f"Onboarding {n_users} {users} users ({result.scenario}, protocol {protocol}): "
                            f"adapt on the answers, score the query")
        for col in (budget_name, "strategy", "answers", "none", "shown", "MAE", "MAE - random [95% CI]",
                    "MAE - popular [95% CI]", "nDCG@10", "nDCG - random [95% CI]"):
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for budget_value, group in summary.groupby("budget", sort=False):
            for i, row in enumerate(group.to_dict("records")):
                def delta(metric: str, reference: str = "random") -> str:
                    key = f"{metric}_vs_{reference}"
                    if key not in row or row[key] != row[key]:
                        return ""
                    low, high = row[f"{key}_ci"]
                    return f"{row[key]:+.4f} [{low:+.4f}, {high:+.4f}]"

                sd = f" ±{row['mae_sd_seeds']:.4f}" if row["seeds"] > 1 else ""
                table.add_row(str(budget_value) if i == 0 else "", row["strategy"], f"{row['mean_answers']:.1f}",
                              f"{row['no_answer_users']:.0f}", f"{row['mean_shown']:.1f}", f"{row['mae']:.4f}{sd}",
                              delta("mae"), delta("mae", "popular"), f"{row['ndcg@10']:.4f}", delta("ndcg@10"),
                              end_section=i == len(group) - 1)
        console.print(table)
        console.print("answers: mean items answered; none: users who answered nothing (scored with the model "
                      "without adaptation); random: mean ± sd over seeds; CIs: paired bootstrap over users.")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder of the demo (checkpoints, metrics, the plot)."),
    epochs: int = typer.Option(30, min=1, help="Maximum meta-training epochs (early stopping on validation users)."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Download ML-100K when it is neither in $METAREC_DATA_DIR nor cached."),
) -> None:
    """Meta-train on ML-100K (else the synthetic dataset), compare with two baselines, plot, recommend."""
    with _errors():
        from metarec.demo import print_demo, run_demo

        with _progress() as progress:
            bars: dict[str, int] = {}

            def report(step: str, done: int, total: int) -> None:
                if step not in bars:
                    bars[step] = progress.add_task(step, total=total)
                progress.update(bars[step], completed=done, total=total)

            result = run_demo(out, epochs=epochs, download=download, progress=report,
                              notice=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
        print_demo(result, console)


@app.command()
def serve(
    run: Path = typer.Argument(..., help="A saved recommender folder or a run folder written by `metarec train`."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the service to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="METAREC_API_KEY", show_default=False,
                                          help="Require this value in the X-API-Key header of /v1 routes "
                                               "(prefer the environment variable: arguments show in `ps`)."),
    workers: int = typer.Option(1, min=1, help="Worker processes; each loads the model and uses one torch thread."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Adapt concurrent /v1/recommend requests together (one inference thread)."),
    batch_size: int = typer.Option(4, min=1, help="Most users per vectorised call when batching (4 is fastest "
                                                  "per user for MeLU's shapes on ML-1M)."),
    batch_wait_ms: float = typer.Option(0.0, min=0.0, help="Wait this long for more requests once one is queued "
                                                           "(0: batch only what is already waiting)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request (uvicorn's access log)."),
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); OpenAPI docs at /docs."""
    with _errors():
        import json
        import os

        import uvicorn

        from metarec.serve.app import ENV_API_KEY, ENV_DIR, ENV_OPTIONS, create_app
        from metarec.serve.recommender import ColdStartRecommender

        options = {"batching": batching, "batch_size": batch_size, "batch_wait_ms": batch_wait_ms}
        recommender = ColdStartRecommender.load(run)  # a bad folder fails here, in one line, before binding
        err_console.print(f"serving {run} (model {recommender.model_version}) on http://{host}:{port}, "
                          f"docs at /docs, {workers} worker(s), batching {'on' if batching else 'off'}"
                          f"{'' if api_key else ', no API key'}", highlight=False)
        if workers == 1:
            uvicorn.run(create_app(recommender, api_key=api_key, **options), host=host, port=port,
                        access_log=access_log)
            return
        del recommender  # each worker process loads its own copy
        os.environ[ENV_DIR] = str(run.resolve())
        os.environ[ENV_OPTIONS] = json.dumps(options)
        if api_key:
            os.environ[ENV_API_KEY] = api_key
        # One SO_REUSEPORT socket per worker process (metarec.serve.workers explains why not uvicorn's
        # workers=N: its shared socket hands a burst of connections to one process).
        from metarec.serve.workers import serve_reuse_port

        serve_reuse_port(host, port, workers, access_log=access_log)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
