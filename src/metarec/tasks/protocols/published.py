"""A peer's published cold-start splits (MetaHIN's format), so results compare on the very same tasks.

A split folder holds, per part, ``NAME.json`` (user id -> list of item ids) and ``NAME_y.json`` (user
id -> the matching ratings), optionally gzipped. Parts: ``meta_training``, ``warm_up``,
``user_cold_testing``, ``item_cold_testing``, ``user_and_item_cold_testing``. Within each user the
last ``query_size`` ratings are the query and the rest the support (MetaHIN's rule). Tasks with fewer
than ``query_size + min_support`` or more than ``max_ratings`` ratings are left out, as MeLU's
protocol does, except that with ``heavy_users="chunk"`` a heavy meta-training user's ratings still
feed meta-training (and the baselines) as chunks of at most ``max_ratings``. Validation users are carved at random from the meta-training users; new items are
those that appear in a cold-item part and never in ``meta_training``.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from metarec.data.dataset import RatingDataset
from metarec.errors import DataError
from metarec.tasks.config import SplitConfig, validation_user_count
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

PARTS = {
    "meta_training": None,
    "warm_up": "warm",
    "user_cold_testing": "new_users",
    "item_cold_testing": "new_items",
    "user_and_item_cold_testing": "new_users_new_items",
}


def _read_json(folder: Path, stem: str) -> dict:
    for path in (folder / f"{stem}.json", folder / f"{stem}.json.gz"):
        if path.exists():
            opener = gzip.open if path.suffix == ".gz" else open
            try:
                with opener(path, "rt", encoding="utf-8") as fh:
                    obj = json.load(fh)
            except (json.JSONDecodeError, OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read split file: {exc}", path=path) from None
            if not isinstance(obj, dict):
                raise DataError("expected a JSON object mapping user id to a list", path=path)
            return obj
    raise DataError(f"split file {stem}.json(.gz) not found", path=folder)


def _part_rows(folder: Path, stem: str, dataset: RatingDataset) -> list[tuple[int, np.ndarray, np.ndarray]]:
    items, ratings = _read_json(folder, stem), _read_json(folder, f"{stem}_y")
    out = []
    low, high = dataset.rating_scale
    for user_id, item_list in items.items():
        if user_id not in ratings or len(ratings[user_id]) != len(item_list):
            raise DataError(f"user {user_id}: items and ratings differ in length", path=folder / f"{stem}_y.json", field=user_id)
        u = dataset.user_vocab.get(user_id)
        if u < 0:
            raise DataError(f"user id {user_id!r} is not in dataset {dataset.name}", path=folder / f"{stem}.json", field=user_id)
        idx = dataset.item_vocab.indices([str(i) for i in item_list], strict=False)
        if (idx < 0).any():
            bad = item_list[int(np.flatnonzero(idx < 0)[0])]
            raise DataError(f"item id {bad!r} is not in dataset {dataset.name}", path=folder / f"{stem}.json", field=user_id)
        r = np.asarray(ratings[user_id], dtype=np.float32)
        if (~np.isfinite(r) | (r < low) | (r > high)).any():
            raise DataError(f"user {user_id}: a rating is outside [{low:g}, {high:g}]", path=folder / f"{stem}_y.json", field=user_id)
        out.append((u, idx, r))
    return out


def _taskset(name: str, rows: list[tuple[int, np.ndarray, np.ndarray]], config: SplitConfig,
             chunk_heavy: bool = False) -> TaskSet:
    """One task per user (query: the last ``query_size`` ratings). With ``chunk_heavy`` a user above
    ``max_ratings`` gives round-robin chunks of at most ``max_ratings`` ratings, each a task, instead of
    being left out (what ``heavy_users="chunk"`` does under the melu protocol)."""
    users, items, ratings, query, keys = [], [], [], [], []
    for u, idx, r in sorted(rows, key=lambda row: row[0]):
        n = len(idx)
        if n < config.query_size + config.min_support:
            continue
        if n > config.max_ratings:
            if not chunk_heavy:
                continue
            n_chunks = -(-n // config.max_ratings)
            parts = [np.arange(c, n, n_chunks) for c in range(n_chunks)]
        else:
            parts = [np.arange(n)]
        for c, part in enumerate(parts):
            m = len(part)
            # Query first in task order, as make_split builds them: the last query_size ratings.
            order = part[np.r_[np.arange(m - config.query_size, m), np.arange(m - config.query_size)]]
            users.append(np.full(m, u))
            items.append(idx[order])
            ratings.append(r[order])
            query.append(np.arange(m) < config.query_size)
            keys.append(np.full(m, u * (1 << 20) + c, np.int64))
    if not users:
        return TaskSet.from_rows(name, *(np.zeros(0, t) for t in (np.int64, np.int64, np.float32, bool)))
    return TaskSet.from_rows(name, np.concatenate(users), np.concatenate(items), np.concatenate(ratings),
                             np.concatenate(query), np.concatenate(keys))


def load_published_split(dataset: RatingDataset, split_dir: str | Path, config: SplitConfig | None = None) -> ColdStartSplit:
    """Build a :class:`ColdStartSplit` from published split files over ``dataset``'s ids."""
    config = config or SplitConfig()
    folder = Path(split_dir)
    if not folder.is_dir():
        raise DataError("split folder not found", path=folder)
    parts = {stem: _part_rows(folder, stem, dataset) for stem in PARTS}
    rng = np.random.default_rng(config.seed)

    train_users = np.unique([u for u, _, _ in parts["meta_training"]])
    chunk = config.heavy_users == "chunk"
    # Validation users are carved from those a validation task can hold; under "chunk" heavy users
    # only feed meta-training (as under the melu protocol).
    eligible = np.unique([u for u, idx, _ in parts["meta_training"]
                          if not chunk or len(idx) <= config.max_ratings])
    n_val = validation_user_count(config, len(train_users))
    val_users = np.sort(rng.choice(eligible, size=min(n_val, len(eligible)), replace=False)) if n_val else np.zeros(0, np.int64)
    is_val = np.isin([u for u, _, _ in parts["meta_training"]], val_users)
    meta_rows = [row for row, v in zip(parts["meta_training"], is_val) if not v]
    val_rows = [row for row, v in zip(parts["meta_training"], is_val) if v]

    train_items = np.unique(np.concatenate([idx for _, idx, _ in parts["meta_training"]]))
    new_item_mask = np.zeros(dataset.n_items, bool)
    for stem in ("item_cold_testing", "user_and_item_cold_testing"):
        for _, idx, _ in parts[stem]:
            new_item_mask[idx] = True
    new_item_mask[train_items] = False

    test = {PARTS[stem]: _taskset(PARTS[stem], parts[stem], config) for stem in PARTS if PARTS[stem]}
    test_users = np.unique(np.concatenate([test["new_users"].user_idx, test["new_users_new_items"].user_idx]))
    meta_train = _taskset("meta_train", meta_rows, config, chunk_heavy=chunk)
    split = ColdStartSplit(
        dataset=dataset, config=replace(config, protocol="splits", split_dir=str(folder)),
        train_users=np.setdiff1d(train_users, val_users), val_users=val_users, test_users=test_users,
        new_item_mask=new_item_mask, meta_train=meta_train,
        validation={"new_users": _taskset("val_new_users", val_rows, config)}, test=test,
        new_item_rule=f"items of the cold-item parts never in meta_training ({folder.name})",
    )
    log.info("published split %s: %d meta-train tasks", folder, len(meta_train))
    return split
