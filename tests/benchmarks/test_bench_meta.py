"""benchmarks/bench_meta.py: MeLU's official-code input layout, and the script's runs with and without it.

The layout tests need neither the data nor MeLU's code. The official-code test runs only when
``$METAREC_MELU_CODE`` names a checkout of github.com/hoyeoplee/MeLU (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from metarec.data.encoding import FeatureTable
from metarec.tasks.taskset import TaskBatch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_meta", REPO / "benchmarks" / "bench_meta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Their forward's column slices (MeLU.py, user_preference_estimator.forward), as facts about their code.
THEIR_SLICES = {"rate": 0, "imdb_genres": (1, 26), "directors": (26, 2212), "actors": (2212, 10242),
                "gender": 10242, "age": 10243, "occupation": 10244, "zip_prefix": 10245}


def tiny_features():
    items = FeatureTable(
        {"rate": torch.tensor([3, 0, 6])},
        {"imdb_genres": torch.tensor([[2, 5, 0], [24, 0, 0], [0, 0, 0]]),  # item 2: no genre at all
         "directors": torch.tensor([[7, 0], [1, 1357], [2, 0]]),  # 1 = our 'unknown value' code
         "actors": torch.tensor([[2, 3, 4, 5387], [0, 0, 0, 0], [9, 0, 0, 0]])},
        3,
    )
    users = FeatureTable({"gender": torch.tensor([1, 2]), "age": torch.tensor([7, 0]),
                          "occupation": torch.tensor([21, 3]), "zip_prefix": torch.tensor([10, 4])}, {}, 2)
    return items, users


def test_dense_rows_put_our_codes_where_their_forward_slices(bench):
    items, users = tiny_features()
    rows = bench.melu_official_item_rows(items)
    assert rows.dtype == torch.long and rows.shape == (3, 10242)
    assert bench.MELU_OFFICIAL_WIDTH == 10246
    assert rows[:, THEIR_SLICES["rate"]].tolist() == [3, 0, 6]
    for col in ("imdb_genres", "directors", "actors"):
        lo, hi = THEIR_SLICES[col]
        block = rows[:, lo:hi]
        for i in range(3):
            codes = {int(c) for c in items.multi[col][i] if c != 0}
            assert set(block[i].nonzero().flatten().tolist()) == (codes or {0}), (col, i)
            assert int(block[i].sum()) == max(1, len(codes))  # their mean divides by this: never 0
    u = bench.melu_official_user_rows(users)
    assert u.tolist() == [[1, 7, 21, 10], [2, 0, 3, 4]]


def test_task_batch_becomes_their_four_lists_without_padding(bench):
    items, users = tiny_features()
    item_rows, user_rows = bench.melu_official_item_rows(items), bench.melu_official_user_rows(users)
    batch = TaskBatch(
        user_idx=torch.tensor([1, 0]),
        support_item=torch.tensor([[2, 0, 0], [1, 2, 0]]),
        support_rating=torch.tensor([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0]]),
        support_mask=torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
        query_item=torch.tensor([[0, 1], [2, 0]]),
        query_rating=torch.tensor([[3.0, 2.0], [5.0, 0.0]]),
        query_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
    )
    sx, sy, qx, qy = bench.melu_official_batch(batch, item_rows, user_rows)
    assert [x.shape for x in sx] == [(1, 10246), (2, 10246)] and [x.shape for x in qx] == [(2, 10246), (1, 10246)]
    assert [y.tolist() for y in sy] == [[4.0], [1.0, 5.0]] and [y.tolist() for y in qy] == [[3.0, 2.0], [5.0]]
    assert all(y.dtype == torch.float32 for y in sy + qy) and all(x.dtype == torch.long for x in sx + qx)
    assert torch.equal(sx[1][:, :10242], item_rows[[1, 2]])
    assert torch.equal(qx[0][:, :10242], item_rows[[0, 1]])
    for t, xs in ((0, sx[0]), (1, sx[1]), (0, qx[0]), (1, qx[1])):
        user = int(batch.user_idx[t])
        for col in ("gender", "age", "occupation", "zip_prefix"):
            assert (xs[:, THEIR_SLICES[col]] == users.single[col][user]).all()


def test_their_config_sizes_follow_our_vocabularies(bench):
    enc = lambda **c: SimpleNamespace(cardinalities=c)  # noqa: E731
    item = enc(rate=7, imdb_genres=25, directors=1358, actors=5388)
    user = enc(gender=3, age=8, occupation=22, zip_prefix=11)
    assert bench.melu_official_sizes(item, user) == {
        "num_rate": 7, "num_gender": 3, "num_age": 8, "num_occupation": 22, "num_zipcode": 11,
        "num_genre": 25, "num_director": 2186, "num_actor": 8030}  # blocks: their forward's fixed widths
    with pytest.raises(ValueError, match="directors"):
        bench.melu_official_sizes(enc(rate=7, imdb_genres=25, directors=3000, actors=10), user)


@pytest.mark.realdata
@pytest.mark.slow
def test_without_melu_code_says_not_measured(bench, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    monkeypatch.delenv("METAREC_MELU_CODE", raising=False)
    assert bench.main(["--steps", "1", "--algorithms", "maml", "--repeats", "1", "--batches", "1", "--no-loop"]) == 0
    out = capsys.readouterr().out
    assert "MeLU official: not measured; pass --melu-code PATH" in out
    assert "naive-equivalent % of mm ceiling:" in out and "(target >= 30%)" in out
    assert "engine / MeLU official: not measured" in out


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("METAREC_MELU_CODE"), reason="set METAREC_MELU_CODE to a checkout of hoyeoplee/MeLU")
def test_official_melu_code_runs_on_our_meta_batches(bench, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    from metarec.tasks.features import encode_features

    split = bench.melu_split()
    feats = encode_features(split)
    batch = bench.sample_batches(split.meta_train, 32, 1)[0]
    converted = bench.melu_official_batch(batch, bench.melu_official_item_rows(feats.item_features),
                                          bench.melu_official_user_rows(feats.user_features))
    runner = bench.MeluOfficial(os.environ["METAREC_MELU_CODE"], feats, inner_steps=1)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    bench.melu_official_step(runner, converted)
    after = runner.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # their Adam step moved the weights

    assert bench.main(["--steps", "1", "--algorithms", "maml", "--repeats", "1", "--batches", "1", "--no-loop"]) == 0
    out = capsys.readouterr().out
    assert "| MeLU official" in out and "engine / MeLU official: " in out and "not measured" not in out
