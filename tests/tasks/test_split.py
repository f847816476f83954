"""Cold-start splits: leakage impossible by construction and verified, deterministic, MeLU-shaped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataclasses import replace

from metarec.data import load_dataset
from metarec.errors import ConfigError
from metarec.tasks import SCENARIOS, SplitConfig, make_split
from metarec.tasks.split import ColdStartSplit


@pytest.fixture(scope="module")
def ml100k(data_dir):
    return load_dataset("ml-100k", data_dir=data_dir)


@pytest.fixture(scope="module")
def split(ml100k) -> ColdStartSplit:
    return make_split(ml100k, SplitConfig(seed=0))


def test_scenarios_and_query_size(split):
    info = split.summary()
    assert set(info["scenarios"]) == set(SCENARIOS)
    for name, d in info["scenarios"].items():
        assert d["tasks"] > 0, name
        assert d["min_query"] == d["max_query"] == 10
    assert all(info["leakage_checks"].values())


def test_user_history_goes_to_tasks_with_few_new_item_ratings(split):
    tasks = split.test["new_items"]
    known = np.zeros(split.dataset.n_items, bool)
    known[split.train_items()] = True
    new_support = np.add.reduceat(~known[tasks.support_item], tasks.support_ptr[:-1])  # no task is empty
    assert (new_support == tasks.support_sizes).all()  # a new-items task's support: new items only
    history = split.meta_train
    every = split.with_user_history(tasks, None)
    assert every.support_sizes.tolist() == tasks.with_history(history).support_sizes.tolist()
    for limit in (0, 5, 10, 10**6):
        some = split.with_user_history(tasks, limit)
        gets = new_support < limit
        assert 0 < gets.sum() < len(tasks) or limit in (0, 10**6)
        assert (some.support_sizes[~gets] == tasks.support_sizes[~gets]).all()
        assert (some.support_sizes[gets] == every.support_sizes[gets]).all()
    assert (every.support_sizes >= tasks.support_sizes).all() and (every.support_sizes > tasks.support_sizes).any()
    warm = split.test["warm"]  # no new items in a warm support set: always the history
    assert split.with_user_history(warm, 0).support_sizes.tolist() == warm.with_history(history).support_sizes.tolist()


def test_user_history_sets_the_prior_of_tasks_with_new_item_support(split):
    from metarec.tasks.history import HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, tasks_with_new_item_support

    assert HISTORY_AS_PRIOR and HISTORY_MAX_NEW_SUPPORT is None  # the validation-chosen default: every task, as prior
    known = split.known_items()
    new_items, warm = split.test["new_items"], split.test["warm"]
    assert tasks_with_new_item_support(new_items, known).all() and not tasks_with_new_item_support(warm, known).any()
    out = split.with_user_history(new_items)
    plain = split.with_user_history(new_items, as_prior=False)
    assert plain.support_prior is None
    assert out.support_item.tolist() == plain.support_item.tolist()
    # exactly the history rows are flagged: the rows whose item is one training saw (a new-items support is new items)
    assert out.support_prior.tolist() == known[out.support_item].tolist()
    assert out.support_prior.sum() == (out.support_sizes - new_items.support_sizes).sum() > 0
    # warm tasks (no new-item support ratings) take the history into their support
    assert not split.with_user_history(warm).support_prior.any()


def test_user_filter_and_disjoint_roles(split, ml100k):
    counts = ml100k.ratings.groupby("user_idx").size()
    everyone = np.concatenate([split.train_users, split.val_users, split.test_users])
    assert len(np.unique(everyone)) == len(everyone)
    assert counts.loc[everyone].between(13, 100).all()
    assert abs(len(split.test_users) / len(everyone) - 0.2) < 0.01


def test_no_rating_is_used_twice(split, ml100k):
    """Every (user, item) pair appears in at most one place among meta-train and the test queries."""
    seen = set()
    for ts in [split.meta_train, *(split.test[s] for s in ("new_users", "new_items", "new_users_new_items"))]:
        rows = ts.rows()
        pairs = set(zip(rows["user_idx"].tolist(), rows["item_idx"].tolist()))
        assert not pairs & seen
        seen |= pairs
    warm = split.test["warm"]
    warm_query = set(zip(np.repeat(warm.user_idx, warm.query_sizes).tolist(), warm.query_item.tolist()))
    mt = split.meta_train.rows()
    assert not warm_query & set(zip(mt["user_idx"].tolist(), mt["item_idx"].tolist()))
    # ratings in tasks are the dataset's own
    lookup = {(u, i): r for u, i, r in ml100k.ratings[["user_idx", "item_idx", "rating"]].itertuples(index=False)}
    rows = split.test["new_users"].rows()
    assert all(lookup[(u, i)] == r for u, i, r in zip(rows["user_idx"], rows["item_idx"], rows["rating"]))


def test_leakage_checks_detect_leaks(split):
    """The checks can fail: a test user's task smuggled into meta-training is caught."""
    leaked = replace(split, meta_train=split.test["new_users"], _cache={})
    checks = leaked.leakage_checks()
    assert not checks["test_users_not_in_meta_train"]
    new_item_leak = replace(split, meta_train=split.test["new_items"], _cache={})
    assert not new_item_leak.leakage_checks()["new_items_not_in_meta_train"]


def test_same_seed_same_split_other_seed_other_split(ml100k, split):
    again = make_split(ml100k, SplitConfig(seed=0))
    assert again.fingerprint() == split.fingerprint()
    assert again.summary() == split.summary()
    assert make_split(ml100k, SplitConfig(seed=1)).fingerprint() != split.fingerprint()


def test_fixed_support_size(split):
    for k in (1, 3, 5, 10, 20):
        fixed = split.with_support_size(k)
        for name, ts in fixed.test.items():
            assert (ts.support_sizes == k).all(), (name, k)
            assert (ts.query_sizes == 10).all()
        assert all(fixed.leakage_checks().values())
    five = split.with_support_size(5).test["new_users"]
    full = split.test["new_users"]
    # the K support ratings are a subset of the full support set, and queries are unchanged
    pos = {u: t for t, u in enumerate(full.user_idx)}
    for t, u in enumerate(five.user_idx):
        assert set(five.support_of(t)[0]) <= set(full.support_of(pos[u])[0])
        assert np.array_equal(five.query_of(t)[0], full.query_of(pos[u])[0])


def test_time_protocol_queries_are_the_latest(ml100k):
    split = make_split(ml100k, SplitConfig(protocol="time", seed=0))
    ts_of = {(u, i): t for u, i, t in ml100k.ratings[["user_idx", "item_idx", "timestamp"]].itertuples(index=False)}
    for name in ("new_users", "warm"):
        tasks = split.test[name]
        for t in range(len(tasks)):
            u = int(tasks.user_idx[t])
            s_times = [ts_of[(u, int(i))] for i in tasks.support_of(t)[0]]
            q_times = [ts_of[(u, int(i))] for i in tasks.query_of(t)[0]]
            assert max(s_times) <= min(q_times)
    assert all(split.leakage_checks().values())


def test_time_protocol_skips_users_without_timestamps(tiny_ratings_without_time):
    with pytest.raises(ConfigError, match="users"):
        make_split(tiny_ratings_without_time, SplitConfig(protocol="time"))


def test_new_items_by_release_year(ml100k):
    split = make_split(ml100k, SplitConfig(new_item_year=1997))
    years = ml100k.item_release_year()
    assert np.array_equal(split.new_item_mask, np.nan_to_num(years, nan=0) >= 1997)
    assert "1997" in split.new_item_rule


def test_packing_and_bucketing(split):
    tasks = split.meta_train
    packed = tasks.packed()
    assert packed.support_item.shape == (len(tasks), tasks.support_sizes.max())
    assert torch.equal(packed.support_mask.sum(1).long(), torch.as_tensor(tasks.support_sizes))
    batches = list(tasks.batches(32, shuffle=True, generator=np.random.default_rng(0)))
    assert sum(len(b) for b in batches) == len(tasks)
    users = torch.cat([b.user_idx for b in batches])
    assert sorted(users.tolist()) == sorted(tasks.user_idx.tolist())
    padded_bucketed = sum(b.support_mask.numel() for b in batches)
    padded_plain = sum(b.support_mask.numel() for b in tasks.batches(32, shuffle=True, generator=np.random.default_rng(0), bucket=False))
    assert padded_bucketed < 0.8 * padded_plain
    # a batch row is its task
    b = batches[0]
    t = int(np.flatnonzero(tasks.user_idx == int(b.user_idx[0]))[0])
    n = int(b.support_mask[0].sum())
    assert np.array_equal(b.support_item[0, :n].numpy(), tasks.support_of(t)[0])


def test_config_validation():
    with pytest.raises(ConfigError, match="protocol must be"):
        SplitConfig(protocol="random")
    with pytest.raises(ConfigError, match="min_ratings must be <= max_ratings"):
        SplitConfig(min_ratings=50, max_ratings=10)
    with pytest.raises(ConfigError, match="needs split_dir"):
        SplitConfig(protocol="splits")


def test_published_metahin_splits(data_dir):
    ml1m = load_dataset("ml-1m", data_dir=data_dir)
    split = make_split(ml1m, SplitConfig(protocol="splits", split_dir=str(data_dir / "metahin-movielens")))
    assert set(split.test) == set(SCENARIOS)
    assert all(split.leakage_checks().values())
    for ts in split.test.values():
        assert len(ts) > 100 and (ts.query_sizes == 10).all()
    # The query is each user's last 10 listed ratings.
    import gzip, json

    items = json.load(gzip.open(data_dir / "metahin-movielens" / "user_cold_testing.json.gz"))
    tasks = split.test["new_users"]
    user_id = ml1m.user_vocab.ids[int(tasks.user_idx[0])]
    expected = [ml1m.item_vocab.index(str(i)) for i in items[user_id][-10:]]
    assert tasks.query_of(0)[0].tolist() == expected


def test_published_split_errors_name_the_file(tmp_path, data_dir):
    import json

    ml100k = load_dataset("ml-100k", data_dir=data_dir)
    for stem in ("meta_training", "warm_up", "user_cold_testing", "item_cold_testing", "user_and_item_cold_testing"):
        (tmp_path / f"{stem}.json").write_text(json.dumps({"1": [1, 2]}))
        (tmp_path / f"{stem}_y.json").write_text(json.dumps({"1": [4, 5]}))
    (tmp_path / "warm_up.json").write_text(json.dumps({"1": [1, 99999]}))
    from metarec.errors import DataError

    with pytest.raises(DataError, match=r"warm_up.json.*item id 99999"):
        make_split(ml100k, SplitConfig(protocol="splits", split_dir=str(tmp_path)))
    (tmp_path / "warm_up.json").write_text("{not json")
    with pytest.raises(DataError, match="warm_up.json"):
        make_split(ml100k, SplitConfig(protocol="splits", split_dir=str(tmp_path)))


def test_published_split_chunks_heavy_meta_training_users(tmp_path, ml100k):
    """heavy_users="chunk": a meta-training user above max_ratings feeds meta-training as chunks of at
    most max_ratings (every rating once, 10 query ratings each) and is never a validation user; "drop"
    leaves them out, as MeLU's protocol does."""
    import json

    frame = ml100k.ratings
    counts = frame.groupby("user_idx").size()
    heavy = int(counts.idxmax())
    ordinary = counts[(counts >= 20) & (counts <= 60)].index[:40].tolist()

    def part(users):
        sub = frame[frame["user_idx"].isin(users)]
        items = {ml100k.user_vocab.ids[u]: [ml100k.item_vocab.ids[i] for i in g["item_idx"]] for u, g in sub.groupby("user_idx")}
        ratings = {ml100k.user_vocab.ids[u]: g["rating"].astype(float).tolist() for u, g in sub.groupby("user_idx")}
        return items, ratings

    parts = {"meta_training": [heavy, *ordinary[:30]], "warm_up": ordinary[:5], "user_cold_testing": ordinary[30:],
             "item_cold_testing": ordinary[30:35], "user_and_item_cold_testing": ordinary[35:]}
    for stem, users in parts.items():
        items, ratings = part(users)
        (tmp_path / f"{stem}.json").write_text(json.dumps(items))
        (tmp_path / f"{stem}_y.json").write_text(json.dumps(ratings))
    config = SplitConfig(protocol="splits", split_dir=str(tmp_path), val_user_fraction=0.2)
    dropped = make_split(ml100k, replace(config, heavy_users="drop"))
    chunked = make_split(ml100k, replace(config, heavy_users="chunk"))
    assert heavy not in dropped.meta_train.user_idx.tolist()
    tasks = chunked.meta_train
    mine = np.flatnonzero(tasks.user_idx == heavy)
    n_heavy = int(counts[heavy])
    assert len(mine) == -(-n_heavy // config.max_ratings)
    assert all(tasks.support_sizes[t] + tasks.query_sizes[t] <= config.max_ratings for t in mine)
    assert (tasks.query_sizes[mine] == config.query_size).all()
    assert int(tasks.support_sizes[mine].sum() + tasks.query_sizes[mine].sum()) == n_heavy
    assert heavy not in chunked.val_users.tolist()
    kept = [u for u in parts["meta_training"] if u not in chunked.val_users.tolist()]
    assert len(chunked.train_ratings()) == int(counts[kept].sum())  # every rating of every meta-train user


def test_min_val_users_lifts_a_small_validation_set(ml100k):
    from metarec.tasks.config import validation_user_count

    assert validation_user_count(SplitConfig(val_user_fraction=0.1, min_val_users=150), 700) == 150
    assert validation_user_count(SplitConfig(val_user_fraction=0.1, min_val_users=150), 5000) == 500
    assert validation_user_count(SplitConfig(val_user_fraction=0.1, min_val_users=150), 200) == 100  # at most half
    small = make_split(ml100k, SplitConfig(seed=0, val_user_fraction=0.1))
    lifted = make_split(ml100k, SplitConfig(seed=0, val_user_fraction=0.1, min_val_users=150))
    assert len(small.val_users) < 100 and len(lifted.val_users) == 150
    assert set(lifted.test_users.tolist()) == set(small.test_users.tolist())  # only train / validation move
    with pytest.raises(ConfigError, match="min_val_users must be >= 0"):
        SplitConfig(min_val_users=-1)


def test_heavy_users_new_item_tasks_are_known_users_on_unused_new_item_ratings(ml100k):
    split = make_split(ml100k, SplitConfig(seed=0, heavy_users="chunk"))
    tasks = split.heavy_new_item_tasks(seed=0)
    assert tasks is not None and len(tasks) > 10
    counts = np.bincount(ml100k.ratings["user_idx"].to_numpy(), minlength=ml100k.n_users)
    assert (counts[tasks.user_idx] > split.config.max_ratings).all()  # heavy users only
    assert set(tasks.user_idx.tolist()) <= set(split.meta_train.user_idx.tolist())  # known to training
    rows = tasks.rows()
    assert split.new_item_mask[rows["item_idx"]].all() and (tasks.query_sizes == split.config.query_size).all()
    pairs = set(zip(rows["user_idx"].tolist(), rows["item_idx"].tolist()))
    for ts in [split.meta_train, *split.validation.values(), *split.test.values()]:
        used = ts.rows()
        assert not pairs & set(zip(used["user_idx"].tolist(), used["item_idx"].tolist()))  # data no scenario uses
    assert make_split(ml100k, SplitConfig(seed=0)).heavy_new_item_tasks() is None  # "drop": heavy users unknown


def test_without_heavy_users_the_validation_users_new_items_choose_the_history_multiple(ml100k):
    """Published splits and datasets without users above max_ratings: the validation users' ratings of new
    items make the tasks, their old-item validation ratings the history (flagged as the prior) - validation
    data only, every task with enough new-item ratings."""
    split = make_split(ml100k, SplitConfig(seed=0))  # heavy users dropped: none to choose on
    assert split.heavy_new_item_tasks() is None
    source, tasks = split.history_choice_tasks()
    assert source == "validation_users" and len(tasks) >= 5
    assert set(tasks.user_idx.tolist()) <= set(split.val_users.tolist())
    assert (tasks.query_sizes == split.config.query_size).all()
    prior = tasks.support_prior.astype(bool)
    support_task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    assert split.new_item_mask[tasks.query_item].all() and split.new_item_mask[tasks.support_item[~prior]].all()
    old = split.validation["new_users"].rows()
    history = set(zip(old["user_idx"].tolist(), old["item_idx"].tolist()))
    rows = set(zip(tasks.user_idx[support_task[prior]].tolist(), tasks.support_item[prior].tolist()))
    assert rows and rows <= history  # the history is the users' old-item validation ratings
    # every validation user with enough new-item ratings has a task
    r = ml100k.ratings
    val = np.isin(r["user_idx"].to_numpy(), split.validation["new_users"].user_idx)
    counts = np.bincount(r["user_idx"].to_numpy()[val & split.new_item_mask[r["item_idx"].to_numpy()]],
                         minlength=ml100k.n_users)
    enough = np.flatnonzero(counts >= split.config.query_size + split.config.min_support)
    assert sorted(tasks.user_idx.tolist()) == enough.tolist()
    test_users = set(split.test_users.tolist()) | set(split.meta_train.user_idx.tolist())
    assert not test_users & set(tasks.user_idx.tolist())


def test_published_split_never_chooses_the_history_multiple_on_test_ratings(tmp_path, ml100k):
    """Under published splits a validation user is carved from the warm users, and the cold-item parts
    hold warm users' ratings of new items: those are test data. The validation users' new-item tasks that
    choose the history's multiple are made only of new-item ratings no part holds."""
    import json

    frame = ml100k.ratings
    counts = frame.groupby("user_idx").size()
    users = counts[(counts >= 80) & (counts <= 100)].index[:60].tolist()
    sub = frame[frame["user_idx"].isin(users)]
    new = (sub["item_idx"] % 3 == 0).to_numpy()
    in_test = new & (np.arange(len(sub)) % 2 == 0)  # half of each user's new-item ratings are test data

    def write(stem, rows):
        rows = sub[rows]
        items = {ml100k.user_vocab.ids[u]: [ml100k.item_vocab.ids[i] for i in g["item_idx"]] for u, g in rows.groupby("user_idx")}
        ratings = {ml100k.user_vocab.ids[u]: g["rating"].astype(float).tolist() for u, g in rows.groupby("user_idx")}
        (tmp_path / f"{stem}.json").write_text(json.dumps(items))
        (tmp_path / f"{stem}_y.json").write_text(json.dumps(ratings))

    warm = ~new & sub["user_idx"].isin(users[:5]).to_numpy() & (np.arange(len(sub)) % 4 == 1)
    write("meta_training", ~new & ~warm)
    write("warm_up", warm)
    write("item_cold_testing", in_test)
    cold = frame[frame["user_idx"].isin(counts[(counts >= 20) & (counts <= 60)].index[:20])]
    for stem in ("user_cold_testing", "user_and_item_cold_testing"):
        rows = cold[cold["item_idx"] % 3 != 0] if stem != "user_and_item_cold_testing" else cold[cold["item_idx"] % 3 == 0]
        items = {ml100k.user_vocab.ids[u]: [ml100k.item_vocab.ids[i] for i in g["item_idx"]] for u, g in rows.groupby("user_idx")}
        ratings = {ml100k.user_vocab.ids[u]: g["rating"].astype(float).tolist() for u, g in rows.groupby("user_idx")}
        (tmp_path / f"{stem}.json").write_text(json.dumps(items))
        (tmp_path / f"{stem}_y.json").write_text(json.dumps(ratings))
    split = make_split(ml100k, SplitConfig(protocol="splits", split_dir=str(tmp_path), val_user_fraction=0.3))
    assert set(split.val_users.tolist()) & set(split.test["new_items"].user_idx.tolist())  # the overlap exists
    source, tasks = split.history_choice_tasks()
    assert source == "validation_users" and len(tasks) >= 5
    prior = tasks.support_prior.astype(bool)
    support_task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    chosen_on = set(zip(tasks.user_idx[support_task[~prior]].tolist(), tasks.support_item[~prior].tolist()))
    chosen_on |= set(zip(np.repeat(tasks.user_idx, tasks.query_sizes).tolist(), tasks.query_item.tolist()))
    test = set()
    for ts in split.test.values():
        rows = ts.rows()
        test |= set(zip(rows["user_idx"].tolist(), rows["item_idx"].tolist()))
    val_new = sub[new & np.isin(sub["user_idx"], split.val_users)]
    assert set(zip(val_new["user_idx"].tolist(), val_new["item_idx"].tolist())) & test  # there was test data to avoid
    assert chosen_on and not chosen_on & test
    assert all(split.leakage_checks().values())
