"""``metarec demo``: meta-train on ML-100K, compare with two baselines, recommend for one new user.

Data: ``$METAREC_DATA_DIR``, else the cache, else a download from GroupLens; offline with neither, the
synthetic dataset (the caller is told in one line). Everything is scored on test users and items that
meta-training never saw; methods are selected on validation users only, as in the benchmark.

The computation (:func:`run_demo`) only logs; :func:`print_demo` renders its result for the CLI.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)

SCENARIOS = ("new_users", "new_items", "new_users_new_items")
SCENARIO_LABELS = {"new_users": "new users", "new_items": "new items", "new_users_new_items": "both new"}
BASELINES = ("bias", "mf")
METHOD_LABELS = {  # short: the table must fit 80 columns
    "maml": "MAML, adapted",
    "maml-no-adapt": "MAML, no adapt",
    "bias": "bias fold-in",
    "mf": "MF fold-in",
}
SUPPORT_SIZES = (1, 3, 5, 10)
RANKING_METRIC = "ndcg@10"
Progress = Callable[[str, int, int], None]  # (step description, done, total)
Notice = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo computed; :func:`print_demo` shows it."""

    dataset: str
    synthetic: bool
    description: str
    best_epoch: int
    best_val_mae: float
    table: pd.DataFrame  # method, scenario, tasks, mae, ndcg@10
    k_curve: pd.DataFrame  # method, k, tasks, mae (new users with exactly k support ratings)
    plot: Path
    user: dict  # attributes, the 5 ratings (item_id, title, rating)
    top: pd.DataFrame  # item_id, score, title, held_out (the user's real rating when known)
    run_dir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)


def demo_dataset(notice: Notice | None = None, *, download: bool = True) -> tuple[RatingDataset, bool]:
    """ML-100K from ``$METAREC_DATA_DIR`` or the cache, else downloaded; else the synthetic dataset.

    Returns the dataset and whether it is the synthetic fallback.
    """
    from metarec.data import load_dataset

    try:
        return load_dataset("ml-100k"), False
    except DataNotFoundError as missing:
        reason = str(missing).splitlines()[0]
    if download:
        from metarec.data.fetch import fetch_dataset

        try:
            log.info("ML-100K not found locally (%s): downloading it", reason)
            with _quiet_pooch():  # offline, the fallback notice below is the one line the user sees
                folder = fetch_dataset("ml-100k")
            if notice:
                notice(f"ML-100K was neither in $METAREC_DATA_DIR nor cached: downloaded it to {folder}")
            return load_dataset("ml-100k", data_dir=folder.parent), False
        except (DataError, OSError) as failed:
            reason = str(failed).splitlines()[0]
    log.info("ML-100K unavailable: %s", reason)
    if notice:
        notice("ML-100K unavailable (no $METAREC_DATA_DIR, no cache, no download): using the synthetic dataset.")
    from metarec.data.synthetic import SyntheticConfig, make_synthetic

    return make_synthetic(SyntheticConfig()).dataset, True


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch announces every download attempt on its logger; hide it for the demo's try."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def demo_config(dataset: str, epochs: int):
    """The ML-100K benchmark settings (configs/ml100k.toml, chosen on validation users; the package
    does not ship configs/, a test keeps the two equal): neural CF whose new-user offset is folded in by
    closed-form ridge regression, item id embeddings, a fresh support / query partition per epoch."""
    from metarec.meta.run import RunConfig

    cfg = RunConfig.preset("neural-cf", "maml")
    cfg = cfg.override("data", dataset=dataset).override("split", heavy_users="chunk")
    cfg = cfg.override("model", embedding_size=32, hidden=[64], factors=32, item_id_embedding=True,
                       item_id_dropout=0.0, fold_in=True)
    cfg = cfg.override("meta", adapt="head", inner_steps=0, inner_lr=0.1, outer_lr=1e-3, l2=1e-4, meta_batch_size=32)
    return cfg.override("train", epochs=epochs, patience=5, resample_query=True, threads=1)


def _catalogue(split, scenario: str) -> np.ndarray:
    """Candidates of full-catalogue ranking, as in the benchmark: items with a rating (new items only
    in the new-item scenarios)."""
    rated = np.zeros(split.dataset.n_items, bool)
    rated[split.dataset.ratings["item_idx"].to_numpy()] = True
    if scenario.endswith("new_items"):
        rated &= split.new_item_mask
    return np.flatnonzero(rated)


def run_demo(out: str | Path, *, epochs: int = 30, seed: int = 0, support_sizes: tuple[int, ...] = SUPPORT_SIZES,
             download: bool = True, progress: Progress | None = None, notice: Notice | None = None) -> DemoResult:
    """Meta-train, evaluate against two baselines, plot, and recommend for a sample new user."""
    from metarec.eval.benchmark import BenchmarkConfig, MetaMethod, make_method
    from metarec.eval.metrics import catalogue_ranking_metrics, mae_rmse
    from metarec.meta.trainer import Trainer, load_best
    from metarec.serve.recommender import ColdStartRecommender
    from metarec.tasks import make_split

    started = time.perf_counter()
    out = Path(out)
    dataset, synthetic = demo_dataset(notice, download=download)
    cfg = demo_config(dataset.name, epochs).override("split", seed=seed).override("train", seed=seed)
    split = make_split(dataset, cfg.split)
    description = (f"{dataset.name}: {dataset.n_users} users, {dataset.n_items} items, {dataset.n_ratings} ratings; "
                   f"{len(split.meta_train)} meta-train users, {len(split.test['new_users'])} new (test) users, "
                   f"{int(split.new_item_mask.sum())} new items")
    log.info(description)

    def report(stage: str, done: int, total: int) -> None:
        if progress and stage == "epoch":
            progress("meta-training (MAML, epochs; stops early on validation users)", done, total)

    trained = Trainer(cfg, split=split, run_dir=out, progress=report).fit()
    ckpt = load_best(out)
    meta = MetaMethod("maml", cfg)
    meta.learner = ckpt.learner
    methods = [meta]
    bench = BenchmarkConfig(dataset=dataset.name, seeds=(seed,), methods=BASELINES)
    for i, name in enumerate(BASELINES):
        if progress:
            progress("fitting the baselines (regularisation chosen on validation users)", i, len(BASELINES))
        baseline = make_method(name, bench, seed)
        baseline.fit(split)
        methods.append(baseline)
    if progress:
        progress("fitting the baselines (regularisation chosen on validation users)", len(BASELINES), len(BASELINES))

    popularity = np.bincount(split.train_ratings()["item_idx"].to_numpy(), minlength=dataset.n_items).astype(np.float64)
    rows = []
    variants = [(m, v) for m in methods for v in m.variants()]
    for i, (method, variant) in enumerate(variants):
        if progress:
            progress("scoring test users (MAE, full-catalogue nDCG@10)", i, len(variants))
        for scenario in SCENARIOS:
            tasks = split.test[scenario]
            if not len(tasks):
                continue
            catalogue = _catalogue(split, scenario)
            rating = mae_rmse(tasks, method.predict(variant, tasks))
            ranking = catalogue_ranking_metrics(method.scorer(variant, tasks, catalogue), tasks, catalogue, popularity, 10)
            rows.append({"method": variant, "scenario": scenario, "tasks": len(tasks), "mae": rating["mae"],
                         RANKING_METRIC: ranking["ndcg@10"]})
    if progress:
        progress("scoring test users (MAE, full-catalogue nDCG@10)", len(variants), len(variants))
    table = pd.DataFrame(rows)

    curve = []
    for k in support_sizes:
        tasks = split.with_support_size(k).test["new_users"]
        if not len(tasks):
            continue
        for method, variant in variants:
            curve.append({"method": variant, "k": k, "tasks": len(tasks),
                          "mae": mae_rmse(tasks, method.predict(variant, tasks))["mae"]})
    k_curve = pd.DataFrame(curve)
    plot = plot_demo(table, k_curve, out / "demo.png", dataset.name)

    titles = dataset.items["title"].astype(str).to_dict() if "title" in dataset.items.columns else {}
    counts = np.bincount(split.train_ratings()["item_idx"].to_numpy(), minlength=dataset.n_items)
    recommender = ColdStartRecommender(ckpt, items=dataset.items, train_counts=counts, dataset_name=dataset.name, replicas=1)
    user, top = _sample_user(dataset, split, recommender, titles, popularity)
    result = DemoResult(dataset.name, synthetic, description, trained.best_epoch, trained.best_val_mae, table, k_curve,
                        plot, user, top, out, time.perf_counter() - started)
    log.info("demo done in %.1f s", result.seconds)
    return result


def _sample_user(dataset: RatingDataset, split, recommender, titles: dict[str, str],
                 popularity: np.ndarray) -> tuple[dict, pd.DataFrame]:
    """The first test user with at least 5 support ratings: their 5 best-known rated movies (the most
    popular in training, so the titles mean something), and the top-10 after adapting to them. The
    user's real ratings of the recommended movies (their other ratings, never shown to the model) are
    attached when they exist."""
    tasks = split.test["new_users"]
    t = int(np.flatnonzero(tasks.support_sizes >= 5)[0])
    items, ratings = tasks.support_of(t)
    pick = np.argsort(-popularity[items], kind="stable")[:5]
    ids = [dataset.item_vocab.ids[int(i)] for i in items[pick]]
    sample = {item_id: float(r) for item_id, r in zip(ids, ratings[pick])}
    user_id = dataset.user_vocab.ids[int(tasks.user_idx[t])]
    attributes = {}
    if user_id in dataset.users.index:
        known = set(recommender.user_attributes)
        attributes = {k: v for k, v in dataset.users.loc[user_id].items()
                      if k in known and not (isinstance(v, float) and np.isnan(v))}
    top = recommender.recommend(sample, attributes or None, k=10)
    own = dataset.ratings[dataset.ratings["user_idx"] == int(tasks.user_idx[t])]
    held_out = {dataset.item_vocab.ids[int(i)]: float(r) for i, r in zip(own["item_idx"], own["rating"])
                if dataset.item_vocab.ids[int(i)] not in sample}
    top = pd.DataFrame({"item_id": top["item_id"], "score": top["score"],
                        "title": [titles.get(i, "") for i in top["item_id"]],
                        "held_out": [held_out.get(i, np.nan) for i in top["item_id"]]})
    return {"user_id": user_id, "attributes": attributes,
            "ratings": [(i, titles.get(i, ""), r) for i, r in sample.items()], "n_other_ratings": len(held_out)}, top


def plot_demo(table: pd.DataFrame, k_curve: pd.DataFrame, path: Path, dataset: str) -> Path:
    """One PNG: test MAE per scenario and method (left); new-user MAE against the number of ratings the
    user gave (right), which is where adaptation earns its keep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarec._atomic import atomic_path

    methods = list(dict.fromkeys(table["method"]))
    scenarios = [s for s in SCENARIOS if s in set(table["scenario"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        sub = table[table["method"] == method].set_index("scenario")
        left.bar(np.arange(len(scenarios)) + (j - (len(methods) - 1) / 2) * width,
                 [sub.loc[s, "mae"] for s in scenarios], width, label=METHOD_LABELS.get(method, method))
    left.set_xticks(np.arange(len(scenarios)), [SCENARIO_LABELS[s] for s in scenarios])
    left.set_ylabel("test MAE (lower is better)")
    low = float(table["mae"].min())
    left.set_ylim(max(0.0, low - 0.15), float(table["mae"].max()) + 0.05)
    left.set_title(f"{dataset}: MAE per cold-start scenario")
    left.legend(fontsize=7, loc="upper left")
    if len(k_curve):
        for method in methods:
            sub = k_curve[k_curve["method"] == method]
            right.plot(sub["k"], sub["mae"], marker="o", label=METHOD_LABELS.get(method, method))
        ks = sorted(k_curve["k"].unique())
        right.set_xscale("log")
        right.set_xticks(ks, [str(k) for k in ks])
        right.set_xlabel("ratings the new user gave (support size K)")
        right.set_ylabel("test MAE, new users")
        right.set_title("MAE against the number of ratings")
        right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def print_demo(result: DemoResult, console) -> None:
    """Render a :class:`DemoResult` with rich (the CLI's console)."""
    from rich.table import Table

    console.print(f"[bold]{result.description}[/bold]")
    console.print(f"meta-training: best epoch {result.best_epoch}, validation MAE {result.best_val_mae:.4f}")
    table = Table(title="Test users and items never seen in training: query MAE (lower is better), "
                        "full-catalogue nDCG@10 (higher is better)")
    for col in ("scenario (test tasks)", "method", "MAE", "nDCG@10"):
        table.add_column(col, justify="right" if col in ("MAE", "nDCG@10") else "left", no_wrap=True)
    scenarios = [s for s in SCENARIOS if s in set(result.table["scenario"])]
    for s in scenarios:
        sub = result.table[result.table["scenario"] == s]
        best_mae, best_ndcg = sub["mae"].min(), sub[RANKING_METRIC].max()
        for i, row in enumerate(sub.to_dict("records")):
            mae, ndcg = row["mae"], row[RANKING_METRIC]
            table.add_row(f"{SCENARIO_LABELS[s]} ({row['tasks']})" if i == 0 else "", METHOD_LABELS.get(row["method"], row["method"]),
                          f"[bold]{mae:.4f}[/bold]" if mae == best_mae else f"{mae:.4f}",
                          f"[bold]{ndcg:.4f}[/bold]" if ndcg == best_ndcg else f"{ndcg:.4f}",
                          end_section=i == len(sub) - 1)
    console.print(table)
    console.print("MAML: meta-trained neural CF; a new user's ratings are folded in by a ridge solve whose prior "
                  "and penalties were meta-learned (no adapt: the attribute prior alone); bias: global mean + user "
                  "bias + item bias; MF: matrix factorisation; the baselines fold the new user in by ridge "
                  "regression too. Best per scenario in bold. One split (seed 0): intervals over seeds come from "
                  "`metarec benchmark`.")
    console.print(f"plot: {result.plot}")

    user = result.user
    described = ", ".join(f"{k}={v}" for k, v in user["attributes"].items())
    console.print(f"\nA new (test) user{f' ({described})' if described else ''} rated 5 movies:")
    for _, title, rating in user["ratings"]:
        console.print(f"  {rating:.0f}  {title}", highlight=False)
    top = Table(title="Top-10 after adapting to these 5 ratings")
    for col in ("rank", "item_id", "predicted", "title", "their rating*"):
        top.add_column(col, justify="right" if col in ("rank", "predicted", "their rating*") else "left")
    for rank, row in enumerate(result.top.itertuples(index=False), 1):
        real = "" if np.isnan(row.held_out) else f"{row.held_out:.0f}"
        top.add_row(str(rank), str(row.item_id), f"{row.score:.2f}", row.title, real)
    console.print(top)
    console.print(f"* the user's real rating, when they rated the movie (among {user['n_other_ratings']} other "
                  "ratings the model never saw)")
    rate = " ".join(f"--rate {item_id}:{rating:.0f}" for item_id, _, rating in user["ratings"][:2])
    console.print(f"done in {result.seconds:.1f} s; run folder {result.run_dir} "
                  f"(try `metarec recommend {result.run_dir} {rate}`)", highlight=False)
