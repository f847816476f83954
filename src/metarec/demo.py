"""``metarec demo``: meta-train on ML-100K, show what adaptation buys a new user, recommend for one.

Data: ``$METAREC_DATA_DIR`` or the cache; offline with neither, the synthetic dataset (one-line notice).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from metarec.data.dataset import RatingDataset
from metarec.errors import DataNotFoundError


def demo_dataset(console: Console) -> RatingDataset:
    from metarec.data import load_dataset

    try:
        return load_dataset("ml-100k")
    except DataNotFoundError:
        from metarec.data.synthetic import SyntheticConfig, make_synthetic

        console.print("ML-100K not found ($METAREC_DATA_DIR unset, nothing cached): using the synthetic dataset.")
        return make_synthetic(SyntheticConfig()).dataset


def run_demo(out: Path, *, epochs: int = 15, console: Console | None = None) -> dict:
    from metarec.meta.personalize import Personalizer
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer, evaluate_run, load_best
    from metarec.tasks import make_split

    console = console or Console()
    started = time.perf_counter()
    dataset = demo_dataset(console)
    cfg = RunConfig.preset("feature-mlp", "maml").override("data", dataset=dataset.name).override("train", epochs=epochs)
    split = make_split(dataset, cfg.split)
    console.print(f"[bold]{dataset.name}[/bold]: {dataset.n_users} users, {dataset.n_items} items, "
                  f"{dataset.n_ratings} ratings; {len(split.meta_train)} meta-train tasks, "
                  f"{len(split.test['new_users'])} new-user test tasks")
    with console.status("meta-training (MAML, FeatureMLP)..."):
        result = Trainer(cfg, split=split, run_dir=out).fit()
    console.print(f"best epoch {result.best_epoch}, validation MAE {result.best_val_mae:.4f}")
    ckpt = load_best(out)
    results = evaluate_run(ckpt, split)
    table = Table(title="Query MAE / RMSE per scenario (test users and items never seen in training)")
    for col in ("scenario", "tasks", "MAE adapted", "MAE not adapted", "RMSE adapted", "RMSE not adapted"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, m in results.items():
        table.add_row(name, str(m["tasks"]), f"{m['mae']:.4f}", f"{m['mae_no_adapt']:.4f}", f"{m['rmse']:.4f}", f"{m['rmse_no_adapt']:.4f}")
    console.print(table)

    # A sample new user: the first test user's five first-listed support ratings.
    tasks = split.test["new_users"]
    items, ratings = tasks.support_of(0)
    ids = [dataset.item_vocab.ids[i] for i in items[:5]]
    sample = dict(zip(ids, ratings[:5].tolist()))
    user_id = dataset.user_vocab.ids[int(tasks.user_idx[0])]
    attributes = {k: v for k, v in dataset.users.loc[user_id].items() if not isinstance(v, float) or not np.isnan(v)}
    personalizer = Personalizer(ckpt)
    top = personalizer.adapt(sample, attributes).recommend(10)
    titles = dataset.items["title"].astype(str).to_dict() if "title" in dataset.items.columns else {}
    console.print(f"\nA new user ({', '.join(f'{k}={v}' for k, v in attributes.items())}) rated:")
    for item_id, r in sample.items():
        console.print(f"  {r:.0f}  {titles.get(item_id, item_id)}")
    top_table = Table(title="Top-10 after adapting to these 5 ratings")
    for col in ("rank", "item_id", "predicted", "title"):
        top_table.add_column(col)
    for rank, (item_id, score) in enumerate(top, 1):
        top_table.add_row(str(rank), item_id, f"{score:.2f}", titles.get(item_id, ""))
    console.print(top_table)
    console.print(f"done in {time.perf_counter() - started:.1f} s; run folder {out}")
    return {"results": results, "top": top}
