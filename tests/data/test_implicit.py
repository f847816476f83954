"""Implicit feedback: positives kept by threshold, confidences, and the loaders' implicit mode."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.data import RatingDataset, is_implicit, load_dataset, to_implicit
from metarec.data.loaders.lastfm import load_lastfm
from metarec.errors import ConfigError, DataError


def _tiny() -> RatingDataset:
    ratings = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c"],
        "item_id": ["x", "y", "z", "x", "w", "y"],
        "rating": [5.0, 3.0, 4.0, 1.0, 2.0, 4.0],
        "timestamp": [10, 11, 12, 13, 14, 15],
    })
    users = pd.DataFrame({"user_id": ["a", "b", "c"], "age": [20.0, 30.0, 40.0]})
    items = pd.DataFrame({"item_id": ["w", "x", "y", "z", "v"], "genre": ["g1", "g2", "g1", "g2", "g1"]})
    return RatingDataset.from_frames("tiny", ratings, users, items, rating_scale=(1.0, 5.0), meta={"source": "tiny"})


def _pairs(data: RatingDataset) -> list[tuple[str, str]]:
    return list(zip(data.ratings["user_id"], data.ratings["item_id"]))


def test_every_interaction_is_a_positive_with_binary_confidence() -> None:
    data = _tiny()
    imp = to_implicit(data)
    assert _pairs(imp) == _pairs(data)
    assert imp.ratings["rating"].tolist() == [1.0] * 6
    assert imp.rating_scale == (0.0, 1.0)
    assert is_implicit(imp) and not is_implicit(data)
    assert imp.meta["feedback"] == "implicit" and imp.meta["confidence"] == "binary"
    assert imp.meta["positive_threshold"] is None and imp.meta["source"] == "tiny"


def test_threshold_keeps_exactly_the_rows_at_or_above_it(caplog: pytest.LogCaptureFixture) -> None:
    data = _tiny()
    with caplog.at_level(logging.INFO, logger="metarec.data.implicit"):
        imp = to_implicit(data, threshold=4)
    assert _pairs(imp) == [("a", "x"), ("a", "z"), ("c", "y")]
    assert imp.ratings["timestamp"].tolist() == [10, 12, 15]
    assert imp.meta["positive_threshold"] == 4.0
    assert "3 of 6 interactions" in caplog.text
    # catalogue, users, schemas and indices kept: w and v have no positive left but stay items
    assert imp.items.index.tolist() == data.items.index.tolist() and imp.n_items == 5
    assert imp.users.index.tolist() == data.users.index.tolist()
    assert dict(imp.item_schema) == dict(data.item_schema) and dict(imp.user_schema) == dict(data.user_schema)
    merged = imp.ratings.merge(data.ratings, on=["user_id", "item_id"], suffixes=("", "_old"))
    assert (merged["item_idx"] == merged["item_idx_old"]).all() and (merged["user_idx"] == merged["user_idx_old"]).all()


def test_log_confidence_from_ratings_and_from_counts() -> None:
    data = _tiny()
    imp = to_implicit(data, threshold=3, confidence="log")  # kept ratings 5, 3, 4, 4: median 4
    expected = [1 + np.log1p(5 / 4), 1 + np.log1p(3 / 4), 1 + np.log1p(4 / 4), 1 + np.log1p(4 / 4)]
    np.testing.assert_allclose(imp.ratings["rating"], expected, rtol=1e-6)
    assert imp.rating_scale == (0.0, float(np.float32(1 + np.log1p(5 / 4))))
    assert imp.meta["confidence"] == "log"

    counts = pd.Series([100, 0, 10, 1, 7, 30])  # one per row; the threshold still reads the ratings
    imp = to_implicit(data, confidence="log", counts=counts)
    median = np.median([100, 10, 1, 7, 30])  # a zero count is not in the median
    np.testing.assert_allclose(imp.ratings["rating"], 1 + np.log1p(counts.to_numpy() / median), rtol=1e-6)
    assert imp.ratings["rating"].min() == 1.0  # a confidence is never below 1
    imp = to_implicit(data, threshold=4, confidence="log", counts=counts.to_numpy())
    np.testing.assert_allclose(imp.ratings["rating"], 1 + np.log1p(np.array([100, 10, 30]) / 30), rtol=1e-6)


def test_implicit_dataset_survives_save_and_load(tmp_path: Path) -> None:
    imp = to_implicit(_tiny(), confidence="log")
    again = RatingDataset.load(imp.save(tmp_path / "imp"))
    pd.testing.assert_frame_equal(imp.ratings, again.ratings)
    assert is_implicit(again) and again.rating_scale == imp.rating_scale


def test_errors() -> None:
    data = _tiny()
    with pytest.raises(DataError, match="no positive interaction left.*highest 5"):
        to_implicit(data, threshold=5.5)
    with pytest.raises(DataError, match="counts has 2 values for 6 interactions"):
        to_implicit(data, confidence="log", counts=[1, 2])
    with pytest.raises(DataError, match="count -3 is negative") as info:
        to_implicit(data, confidence="log", counts=[1, 2, -3, 4, 5, 6])
    assert info.value.field == "counts" and info.value.line == 3
    with pytest.raises(DataError, match="not a finite number"):
        to_implicit(data, confidence="log", counts=[1, 2, np.nan, 4, 5, 6])
    with pytest.raises(ConfigError, match="confidence must be one of"):
        to_implicit(data, confidence="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="feedback must be"):
        load_dataset("synthetic", feedback="binary")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="positive_threshold applies to feedback='implicit'"):
        load_dataset("synthetic", positive_threshold=4)


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_ml100k_implicit(data_dir: Path) -> None:
    imp = load_dataset("ml-100k", data_dir=data_dir, feedback="implicit")
    assert imp.n_ratings == 100_000 and set(imp.ratings["rating"]) == {1.0}
    assert is_implicit(imp) and imp.meta["confidence"] == "binary"
    raw = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    at_least_4 = raw[raw["r"] >= 4]
    imp4 = load_dataset("ml-100k", data_dir=data_dir, feedback="implicit", positive_threshold=4)
    assert imp4.n_ratings == len(at_least_4)
    assert set(zip(imp4.ratings["user_id"], imp4.ratings["item_id"])) == set(
        zip(at_least_4["u"].astype(str), at_least_4["i"].astype(str)))
    assert imp4.n_items == imp.n_items == 1682  # the catalogue keeps every film


@pytest.mark.realdata
def test_lastfm_implicit_confidence_grows_with_plays(data_dir: Path) -> None:
    folder = data_dir / "hetrec2011-lastfm-2k"
    counted = load_lastfm(folder, raw_counts=True)
    raw = pd.read_csv(folder / "user_artists.dat", sep="\t")
    assert counted.ratings["rating"].tolist() == raw["weight"].astype(float).tolist()
    assert counted.rating_scale == (0.0, float(raw["weight"].max()))

    imp = load_dataset("lastfm", data_dir=data_dir, feedback="implicit")
    assert imp.n_ratings == len(raw) and imp.meta["confidence"] == "log" and is_implicit(imp)
    plays = raw["weight"].to_numpy()
    conf = imp.ratings["rating"].to_numpy()
    order = np.argsort(plays, kind="stable")
    assert np.all(np.diff(conf[order]) >= 0)  # monotone in the play count
    assert conf.min() >= 1.0 and conf[plays == plays.max()].item() == conf.max() > conf.min()
    np.testing.assert_allclose(conf, 1 + np.log1p(plays / np.median(plays)), rtol=1e-6)

    many = to_implicit(counted, threshold=100, confidence="log")  # what positive_threshold=100 does
    assert many.n_ratings == int((plays >= 100).sum())  # on Last.fm the threshold is in plays
