"""The streaming path at tiny scale: synthetic ratings written to Parquet in blocks, read back in chunks into
compact columns, split and packed - checked against the in-memory path (``make_synthetic``,
``RatingDataset.load``, ``make_split`` on string ids) that it must agree with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.data import RatingDataset
from metarec.data.columnar import load_columnar
from metarec.data.synthetic import SyntheticConfig, make_synthetic
from metarec.data.synthetic.stream import write_synthetic
from metarec.errors import DataError
from metarec.tasks import make_split
from metarec.tasks.config import SplitConfig

CONFIG = SyntheticConfig(n_users=300, n_items=150, ratings_per_user=(15, 150), ratings_per_user_exponent=2.2, seed=1)
SPLIT = SplitConfig(heavy_users="chunk", seed=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(CONFIG, tmp_path_factory.mktemp("scale") / "synthetic")


@pytest.fixture(scope="module")
def columnar(folder: Path) -> RatingDataset:
    return load_columnar(folder, batch_rows=997)  # batches that cut through row groups and users


@pytest.fixture(scope="module")
def in_memory(folder: Path) -> RatingDataset:
    return RatingDataset.load(folder)


def test_users_and_items_are_make_synthetics(in_memory: RatingDataset) -> None:
    reference = make_synthetic(CONFIG).dataset
    assert in_memory.user_vocab == reference.user_vocab and in_memory.item_vocab == reference.item_vocab
    assert in_memory.users.astype(str).equals(reference.users.astype(str))
    assert in_memory.items.equals(reference.items)
    assert in_memory.meta == reference.meta and in_memory.item_schema == reference.item_schema


def test_ratings_follow_the_generators_rules(in_memory: RatingDataset, tmp_path: Path) -> None:
    r = in_memory.ratings
    user, ts = r["user_idx"].to_numpy(), r["timestamp"].to_numpy(np.int64)
    assert np.all(np.diff(user) >= 0)  # grouped by user, users in order
    assert np.all(np.diff(ts)[np.diff(user) == 0] > 0)  # each user's ratings in time order
    assert set(np.unique(r["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    per_user = np.bincount(user, minlength=CONFIG.n_users)
    assert per_user.min() >= 1 and per_user.max() <= 150 and len(r) > 15 * CONFIG.n_users * 0.9
    again = RatingDataset.load(write_synthetic(CONFIG, tmp_path / "again"))  # deterministic in the seed
    for column in ("user_idx", "item_idx", "rating", "timestamp"):
        assert r[column].equals(again.ratings[column])


def test_chunked_read_is_the_in_memory_load(columnar: RatingDataset, in_memory: RatingDataset) -> None:
    a, b = columnar.ratings, in_memory.ratings
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in ("user_idx", "item_idx", "rating", "timestamp"):
        assert a[column].equals(b[column]), column
    assert a["user_idx"].dtype == np.int64 and a["rating"].dtype == np.float32
    assert np.array_equal(a["user_id"].astype(str).to_numpy(), b["user_id"].astype(str).to_numpy())
    assert np.array_equal(a["item_id"].astype(str).to_numpy(), b["item_id"].astype(str).to_numpy())
    assert columnar.user_vocab == in_memory.user_vocab and columnar.item_vocab == in_memory.item_vocab
    assert columnar.users.astype(str).equals(in_memory.users.astype(str)) and columnar.items.equals(in_memory.items)
    assert (columnar.user_schema, columnar.item_schema, columnar.rating_scale, columnar.meta) == (
        in_memory.user_schema, in_memory.item_schema, in_memory.rating_scale, in_memory.meta)
    assert columnar.describe() == in_memory.describe()


def test_split_and_packed_tasks_match_the_in_memory_path(columnar: RatingDataset, in_memory: RatingDataset) -> None:
    split = make_split(columnar, SPLIT)
    assert split.fingerprint() == make_split(in_memory, SPLIT).fingerprint()
    assert all(split.leakage_checks().values())
    train, val, test = set(split.train_users.tolist()), set(split.val_users.tolist()), set(split.test_users.tolist())
    assert not (train & val) and not (train & test) and not (val & test)
    r = columnar.ratings
    own = set(zip(r["user_idx"].tolist(), r["item_idx"].tolist(), r["rating"].tolist()))
    tasks = split.meta_train
    batch = tasks.packed()
    for t in range(0, len(tasks), 7):
        s_item, s_rating = tasks.support_of(t)
        q_item, q_rating = tasks.query_of(t)
        u = int(tasks.user_idx[t])
        assert {(u, i, x) for i, x in zip(s_item.tolist() + q_item.tolist(), s_rating.tolist() + q_rating.tolist())} <= own
        assert not set(s_item.tolist()) & set(q_item.tolist())
        s = batch.support_mask[t] > 0
        assert batch.support_item[t][s].tolist() == s_item.tolist()
        assert batch.query_item[t][batch.query_mask[t] > 0].tolist() == q_item.tolist()


def test_ids_missing_from_the_attribute_tables_are_appended_as_load_does(in_memory: RatingDataset,
                                                                         tmp_path: Path) -> None:
    folder = in_memory.save(tmp_path / "partial")
    users = pd.read_parquet(folder / "users.parquet")
    users.drop(index=["u3", "u10", "u299"]).to_parquet(folder / "users.parquet")  # rated, no attributes
    items = pd.read_parquet(folder / "items.parquet")
    items.drop(index=["i0", "i7"]).to_parquet(folder / "items.parquet")
    a, b = load_columnar(folder, batch_rows=500), RatingDataset.load(folder)
    assert a.user_vocab == b.user_vocab and a.item_vocab == b.item_vocab
    assert a.user_vocab.ids[-3:] == ("u10", "u299", "u3")  # appended, sorted
    for column in ("user_idx", "item_idx", "rating", "timestamp"):
        assert a.ratings[column].equals(b.ratings[column]), column


def test_from_columns_checks_rows() -> None:
    users = pd.DataFrame(index=pd.Index(["a", "b"], name="user_id"))
    items = pd.DataFrame(index=pd.Index(["x", "y"], name="item_id"))
    ok = RatingDataset.from_columns("t", np.array([0, 1]), np.array([1, 1]), np.array([4.0, 2.0]), users, items,
                                    timestamp=np.array([5, 7]), timestamp_missing=np.array([False, True]))
    assert ok.ratings["user_id"].astype(str).tolist() == ["a", "b"] and ok.ratings["timestamp"].isna().tolist() == [False, True]
    with pytest.raises(DataError, match="duplicate"):
        RatingDataset.from_columns("t", np.array([0, 1, 0]), np.array([1, 1, 1]), np.array([4.0, 2.0, 1.0]), users, items)
    with pytest.raises(DataError, match="outside the scale"):
        RatingDataset.from_columns("t", np.array([0]), np.array([0]), np.array([6.0]), users, items, rating_scale=(1, 5))
    with pytest.raises(DataError, match="not a row"):
        RatingDataset.from_columns("t", np.array([2]), np.array([0]), np.array([3.0]), users, items)
