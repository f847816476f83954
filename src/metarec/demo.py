"""``metarec demo``: meta-train on ML-100K with the automatic recipe, compare with two baselines along the
K-curve (a newcomer with 1, 3, 5, 10, 20 ratings), recommend for one new user.

Data: ``$METAREC_DATA_DIR``, else the cache, else a download from GroupLens; offline with neither, the
synthetic dataset (the caller is told in one line). Everything is scored on test users and items that
meta-training never saw; methods are selected on validation users only, as in the benchmark.

The computation (:func:`run_demo`) only logs; :func:`metarec.cli.demo.print_demo` renders its result.
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
from metarec.errors import DataError, DataNotFoundError, require_extra
from metarec.tasks.history import HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT

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
# the recipe's meta-learner takes no gradient step: its inner loop is a closed-form ridge fold-in
FOLD_IN_LABELS = {**METHOD_LABELS, "maml": "meta fold-in, adapted", "maml-no-adapt": "meta fold-in, no adapt"}
SUPPORT_SIZES = (1, 3, 5, 10, 20)
# a known (meta-train) user's history in the new-item scenario: the library's defaults, which ``metarec evaluate``
# uses too, so both print the same new-item MAE for the same run
DEMO_HISTORY = {"user_history": True, "history_max_new_support": HISTORY_MAX_NEW_SUPPORT,
                "history_as_prior": HISTORY_AS_PRIOR}
SUPPORT_DRAWS = 3  # seeded choices of the K ratings per test task, averaged
RANKING_METRIC = "ndcg@10"
Progress = Callable[[str, int, int], None]  # (step description, done, total)
Notice = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo computed; :func:`metarec.cli.demo.print_demo` shows it."""

    dataset: str
    synthetic: bool
    description: str
    best_epoch: int
    best_val_mae: float
    table: pd.DataFrame  # method, scenario, tasks, mae, ndcg@10 (method: a key of ``labels``)
    k_curve: pd.DataFrame  # scenario, method, k ("all" = whole support), tasks, mae, vs_best_baseline, ci_low, ci_high
    recipe: dict  # what the automatic recipe chose on validation users, and its trials
    plot: Path
    user: dict  # attributes, the 5 ratings (item_id, title, rating)
    top: pd.DataFrame  # item_id, score, title, held_out (the user's real rating when known)
    run_dir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=lambda: dict(METHOD_LABELS))  # method key -> what it is
    # the known-user history rule of the scores, the same default as ``metarec evaluate``
    history: dict = field(default_factory=lambda: dict(DEMO_HISTORY))


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
    """Choose the recipe on validation users and meta-train, evaluate against two baselines along the
    K-curve, plot, and recommend for a sample new user."""
    require_extra("matplotlib", "plot", "the demo's plot")  # before minutes of training, not after
    from metarec._io import write_json
    from metarec.eval.benchmark import BenchmarkConfig, MetaMethod, make_method
    from metarec.eval.metrics import catalogue_ranking_metrics, mae_rmse
    from metarec.meta.recipe import choose_recipe, recipe_base
    from metarec.meta.trainer import load_best
    from metarec.serve.recommender import ColdStartRecommender
    from metarec.tasks import make_split

    started = time.perf_counter()
    out = Path(out)
    dataset, synthetic = demo_dataset(notice, download=download)
    cfg = recipe_base().override("data", dataset=dataset.name).override("split", seed=seed)
    cfg = cfg.override("train", seed=seed, epochs=epochs)
    split = make_split(dataset, cfg.split)
    description = describe_split(split)
    log.info(description)

    def report(stage: str, done: int, total: int) -> None:
        if progress:
            progress("choosing the recipe on validation users (trainings)", done, total)

    chosen = choose_recipe(split, cfg, progress=report)
    chosen.trainer.write_run(out)
    write_json(out / "recipe.json", chosen.to_dict())
    best_trial = min(chosen.trials, key=lambda t: t.val_score)
    ckpt = load_best(out)
    meta = MetaMethod("maml", chosen.config, **DEMO_HISTORY)
    meta.learner = ckpt.learner
    # what is known about meta-train users (fit() would set it; the demo trained through the recipe instead):
    # without it a known user's history was silently left out and the demo disagreed with `metarec evaluate`
    meta.known, meta.known_items = split.meta_train, split.known_items()
    methods = [meta]
    bench = BenchmarkConfig(dataset=dataset.name, seeds=(seed,), methods=BASELINES, run=chosen.config)
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
    k_curve = _k_curve(split, [(m, v) for m, v in variants if not v.endswith("-no-adapt")], support_sizes, seed)
    labels = method_labels(chosen.config)
    plot = plot_demo(table, k_curve, out / "demo.png", dataset.name, labels)

    titles = dataset.items["title"].astype(str).to_dict() if "title" in dataset.items.columns else {}
    counts = np.bincount(split.train_ratings()["item_idx"].to_numpy(), minlength=dataset.n_items)
    recommender = ColdStartRecommender(ckpt, items=dataset.items, train_counts=counts, dataset_name=dataset.name, replicas=1)
    user, top = _sample_user(dataset, split, recommender, titles, popularity)
    recipe = {"chosen": chosen.to_dict()["chosen"], "trials": len(chosen.trials), "val_score": best_trial.val_score,
              "best_epoch": ckpt.state.get("best_epoch")}
    result = DemoResult(dataset.name, synthetic, description, int(ckpt.state.get("best_epoch", -1)), best_trial.val_score,
                        table, k_curve, recipe, plot, user, top, out, time.perf_counter() - started, labels=labels)
    log.info("demo done in %.1f s", result.seconds)
    return result


def describe_split(split) -> str:
    """The dataset and its split in one line. Heavy users are cut into several meta-train tasks, so tasks and
    the users they come from are counted apart (1118 tasks are not 1118 users)."""
    dataset, meta_train = split.dataset, split.meta_train
    return (f"{dataset.name}: {dataset.n_users} users, {dataset.n_items} items, {dataset.n_ratings} ratings; "
            f"{len(meta_train)} meta-train tasks from {len(np.unique(meta_train.user_idx))} users, "
            f"{len(split.val_users)} validation users, {len(np.unique(split.test['new_users'].user_idx))} new (test) "
            f"users, {int(split.new_item_mask.sum())} new items")


def method_labels(config) -> dict[str, str]:
    """Method key -> label: the meta-learner is named for what its configuration makes it (a closed-form
    fold-in takes no gradient step and is not called MAML)."""
    from metarec.eval.benchmark.config import closed_form

    return dict(FOLD_IN_LABELS if closed_form(config) else METHOD_LABELS)


def _k_curve(split, variants, support_sizes: tuple[int, ...], seed: int) -> pd.DataFrame:
    """Per scenario and K (and the whole support): each method's test MAE over tasks cut to K ratings
    (``SUPPORT_DRAWS`` draws averaged), and the meta-learner minus the better baseline at that K with a
    bootstrap 95% interval over tasks."""
    from metarec.eval.benchmark import paired_difference

    rows = []
    rng = np.random.default_rng(seed)
    for scenario in ("new_users", "new_users_new_items"):
        for k in (*support_sizes, "all"):
            cuts = [split] if k == "all" else [split.with_support_size(k, d) for d in range(SUPPORT_DRAWS)]
            tasks0 = cuts[0].test[scenario]
            if not len(tasks0):
                continue
            errors = {}
            for method, variant in variants:
                per_draw = []
                for cut in cuts:
                    tasks = cut.test[scenario]
                    pred = method.predict(variant, tasks)
                    per_draw.append(np.add.reduceat(np.abs(pred - tasks.query_rating), tasks.query_ptr[:-1]) / tasks.query_sizes)
                errors[variant] = np.mean(per_draw, axis=0)
            baselines = [v for v in errors if v in BASELINES]
            best = min(baselines, key=lambda v: errors[v].mean())
            diff = paired_difference({0: errors["maml"]}, {0: errors[best]}, 2000, rng)
            for variant, err in errors.items():
                rows.append({"scenario": scenario, "method": variant, "k": str(k), "tasks": len(tasks0),
                             "mae": float(err.mean()), "vs_best_baseline": diff["mae_difference"],
                             "best_baseline": best, "ci_low": diff["ci95"][0], "ci_high": diff["ci95"][1]})
    return pd.DataFrame(rows)


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


def plot_demo(table: pd.DataFrame, k_curve: pd.DataFrame, path: Path, dataset: str,
              labels: dict[str, str] | None = None) -> Path:
    """One PNG: test MAE per scenario and method (left); new-user MAE against the number of ratings the
    user gave (right), which is where adaptation earns its keep."""
    matplotlib = require_extra("matplotlib", "plot", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarec._io import atomic_path

    labels = labels or METHOD_LABELS
    methods = list(dict.fromkeys(table["method"]))
    scenarios = [s for s in SCENARIOS if s in set(table["scenario"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        sub = table[table["method"] == method].set_index("scenario")
        left.bar(np.arange(len(scenarios)) + (j - (len(methods) - 1) / 2) * width,
                 [sub.loc[s, "mae"] for s in scenarios], width, label=labels.get(method, method))
    left.set_xticks(np.arange(len(scenarios)), [SCENARIO_LABELS[s] for s in scenarios])
    left.set_ylabel("test MAE (lower is better)")
    low = float(table["mae"].min())
    left.set_ylim(max(0.0, low - 0.15), float(table["mae"].max()) + 0.05)
    left.set_title(f"{dataset}: MAE per cold-start scenario")
    left.legend(fontsize=7, loc="upper left")
    curve = k_curve[(k_curve["scenario"] == "new_users") & (k_curve["k"] != "all")] if len(k_curve) else k_curve
    if len(curve):
        curve = curve.assign(k=curve["k"].astype(int))
        for method in dict.fromkeys(curve["method"]):
            sub = curve[curve["method"] == method]
            right.plot(sub["k"], sub["mae"], marker="o", label=labels.get(method, method))
        ks = sorted(curve["k"].unique())
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
