"""Loaders against the real datasets (counts from the data README) and tiny fixtures written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.data import RatingDataset, load_dataset
from metarec.data.loaders.lastfm import playcounts_to_ratings
from metarec.data.loaders.movielens import load_ml1m
from metarec.data.loaders.recbole import load_recbole
from metarec.data.loaders.registry import REGISTRY, resolve_folder
from metarec.data.loaders.tabular import ColumnMapping, load_table
from metarec.errors import ConfigError, DataError, DataNotFoundError

ML1M_HISTOGRAM = {"1": 56174, "2": 107557, "3": 261197, "4": 348971, "5": 226310}


# ---------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def ml1m_imdb(data_dir: Path) -> RatingDataset:
    return load_dataset("ml-1m-imdb", data_dir=data_dir)


def assert_same_dataset(a: RatingDataset, b: RatingDataset, *, same_meta: bool = True) -> None:
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert dict(a.user_schema) == dict(b.user_schema)
    assert dict(a.item_schema) == dict(b.item_schema)
    assert a.user_vocab == b.user_vocab and a.item_vocab == b.item_vocab
    assert (a.name, a.rating_scale) == (b.name, b.rating_scale)
    if same_meta:
        assert dict(a.meta) == dict(b.meta)


@pytest.mark.realdata
def test_ml100k_counts(data_dir: Path) -> None:
    stats = load_dataset("ml-100k", data_dir=data_dir).describe()
    assert (stats["users"], stats["items"], stats["ratings"]) == (943, 1682, 100000)
    assert stats["ratings_with_timestamp"] == 100000


@pytest.mark.realdata
def test_ml1m_counts_and_attributes(data_dir: Path) -> None:
    data = load_dataset("ml-1m", data_dir=data_dir)  # how fast: a benchmark's business, not a test's
    stats = data.describe()
    assert (stats["users"], stats["items"], stats["ratings"]) == (6040, 3706, 1000209)
    assert stats["catalogue_items"] == 3883 and data.n_users == 6040
    assert stats["ratings_with_timestamp"] == 487650
    assert stats["rating_histogram"] == ML1M_HISTOGRAM
    assert stats["user_attributes"] == {"gender": "categorical", "age": "categorical",
                                        "occupation": "categorical", "zip_prefix": "categorical"}
    assert stats["item_attributes"] == {"title": "text", "year": "numeric", "genres": "multi"}
    assert data.meta["new_item_rule"] == {"release_year_from": 1998}
    # timestamps exist for users 1-2999 only and are never invented for the others
    users = data.ratings["user_id"].astype(int)
    assert data.ratings.loc[users < 3000, "timestamp"].notna().all()
    assert data.ratings.loc[users >= 3000, "timestamp"].isna().all()
    first = data.ratings.iloc[0]
    assert (first["user_id"], first["item_id"], first["rating"], first["timestamp"]) == ("1", "1", 5.0, 978824268)
    toy = data.items.loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert toy["genres"] == ("Animation", "Children's", "Comedy")
    assert data.users.loc["1"].to_dict() == {"gender": "F", "age": "1", "occupation": "10", "zip_prefix": "4"}
    assert (data.item_release_year() >= 1998).sum() > 0


@pytest.mark.realdata
def test_ml1m_imdb_features(ml1m_imdb: RatingDataset) -> None:
    data = ml1m_imdb
    assert data.name == "ml-1m-imdb" and data.n_ratings == 1000209
    assert data.meta["new_item_rule"] == {"release_year_from": 1998}
    kinds = {k: v.kind for k, v in data.item_schema.items()}
    assert kinds == {"title": "text", "year": "numeric", "genres": "multi", "rate": "categorical",
                     "imdb_genres": "multi", "directors": "multi", "actors": "multi"}
    toy = data.items.loc["1"]
    assert toy["rate"] == "G" and toy["directors"] == ("John Lasseter",)
    assert toy["actors"] == ("Tom Hanks", "Tim Allen", "Don Rickles", "Jim Varney")
    assert toy["imdb_genres"] == ("Animation", "Adventure", "Comedy")
    # MeLU merged 860 -> 811 and 1795 -> 1741: those films have no IMDb row and stay missing
    for absent in ("860", "1795"):
        row = data.items.loc[absent]
        assert pd.isna(row["rate"]) and row["actors"] is None and row["directors"] is None
    assert data.items["actors"].notna().sum() > 3800
    assert set(data.items["rate"].dropna()) == {"G", "PG", "PG-13", "R", "NC-17", "UNRATED"}


@pytest.mark.realdata
def test_ml1m_imdb_needs_the_melu_folder(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ml-1m").symlink_to(data_dir / "ml-1m", target_is_directory=True)
    assert resolve_folder("ml-1m", tmp_path) == tmp_path / "ml-1m"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("ml-1m-imdb", data_dir=tmp_path)
    assert "ml-1m-melu-extra" in str(info.value) and "METAREC_DATA_DIR" in str(info.value)
    with pytest.raises(DataNotFoundError, match="movies_extrainfos.dat"):
        load_ml1m(tmp_path / "ml-1m", imdb_features=True)


@pytest.mark.realdata
def test_save_load_round_trip_is_equal(ml1m_imdb: RatingDataset, tmp_path: Path) -> None:
    ml1m_imdb.save(tmp_path / "saved")
    again = load_dataset(tmp_path / "saved")
    assert_same_dataset(ml1m_imdb, again)
    assert again.describe() == ml1m_imdb.describe()


@pytest.mark.realdata
def test_lastfm_counts_and_rule(data_dir: Path, tmp_path: Path) -> None:
    data = load_dataset("lastfm", data_dir=data_dir)
    stats = data.describe()
    assert (stats["users"], stats["ratings"]) == (1892, 92834)
    assert stats["catalogue_items"] == 17632 and stats["items"] == 17632
    assert set(np.unique(data.ratings["rating"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert stats["ratings_with_timestamp"] == 0
    assert stats["user_attributes"] == {}  # Last.fm 2K has no demographics
    assert stats["item_attributes"] == {"name": "text", "tags": "multi"}
    assert data.meta["new_item_rule"] == {"first_rating_fraction": 0.2}
    # quintiles: each rating level holds about a fifth of the ratings
    for count in stats["rating_histogram"].values():
        assert abs(count / stats["ratings"] - 0.2) < 0.01
    # user 2's most played artist (51, 13883 plays) is a 5; their least played a 1
    user2 = data.ratings[data.ratings["user_id"] == "2"].set_index("item_id")["rating"]
    assert user2["51"] == 5.0 and user2.min() == 1.0
    britney = data.items.loc["289"]
    assert britney["name"] == "Britney Spears" and britney["tags"][0] == "pop" and len(britney["tags"]) == 10
    assert data.items["tags"].map(lambda t: t is None or 1 <= len(t) <= 10).all()
    data.save(tmp_path / "lastfm")
    assert_same_dataset(data, RatingDataset.load(tmp_path / "lastfm"))


def test_playcount_quintiles() -> None:
    users = pd.Series(["a"] * 10 + ["b"] + ["c"] * 2)
    counts = pd.Series([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 7, 7])
    got = playcounts_to_ratings(users, counts)
    assert got.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 4, 4]  # ties share the average rank (0.75)


def test_registry_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pooch

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_dataset must not download")

    monkeypatch.setattr(pooch, "retrieve", boom)
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("ml-100k", "ml-1m", "lastfm"):
        with pytest.raises(DataNotFoundError) as info:
            load_dataset(name)
        message = str(info.value)
        assert "data_dir=" in message and "METAREC_DATA_DIR" in message
        assert f"metarec data fetch {name}" in message
    assert set(REGISTRY) >= {"ml-100k", "ml-1m", "ml-1m-imdb", "lastfm"}
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# ---------------------------------------------------------------------------------------------- ML-1M fixture
def write_ml1m(folder: Path, ratings: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ratings, encoding="latin-1")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n3::M::25::15::\n",
                                      encoding="latin-1")
    (folder / "movies.dat").write_text(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Pokémon (1999)::Animation\n3::Untitled::\n",
        encoding="latin-1",
    )
    return folder


def test_ml1m_fixture_mixed_timestamps(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m", "1::1::5::978824268\n1::2::3::978824351\n2::1::4\n3::2::1\n")
    data = load_ml1m(folder)
    assert data.ratings["timestamp"].notna().tolist() == [True, True, False, False]
    assert data.ratings["timestamp"].iloc[1] == 978824351
    assert data.items.loc["2", "title"] == "Pokémon (1999)" and data.items.loc["2", "year"] == 1999
    assert pd.isna(data.items.loc["3", "year"]) and data.items.loc["3", "genres"] is None
    assert data.users["zip_prefix"].tolist()[:2] == ["4", "7"] and pd.isna(data.users.loc["3", "zip_prefix"])
    assert data.n_items == 3 and data.describe()["items"] == 2


def test_ml1m_fixture_imdb_absent_movie_is_missing(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m", "1::1::5::978824268\n2::2::4\n")
    extra = tmp_path / "ml-1m-melu-extra"
    extra.mkdir()
    line = "1::Toy Story::1995::G::22 Nov 1995::Animation, Comedy::John Lasseter::W::Tom Hanks, Tim Allen::P::U"
    (extra / "movies_extrainfos.dat").write_bytes((line + "\r\n").encode("utf-8"))
    data = load_ml1m(folder, imdb_features=True)
    assert data.items.loc["1", "actors"] == ("Tom Hanks", "Tim Allen")
    assert data.items.loc["1", "imdb_genres"] == ("Animation", "Comedy")
    assert pd.isna(data.items.loc["2", "rate"]) and data.items.loc["2", "directors"] is None


# ---------------------------------------------------------------------------------------------- RecBole
def write_recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t5\t881250949\nu1\ti2\t3\t881250950\nu2\ti1\t4\t\nu3\ti3\t1.5\t891717742\n",
        encoding="utf-8",
    )
    (folder / "toy.user").write_text(
        "user_id:token\tage:float\tgender:token\tembedding:float_seq\n"
        "u1\t24\tM\t0.1 0.2\nu2\t\tF\t0.3 0.4\nu4\t50\tM\t0 0\n",
        encoding="utf-8",
    )
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\tgenre:token_seq\trelease_year:float\n"
        "i1\tToy Story\tAnimation Comedy\t1995\ni2\tHeat\t\t1995\ni3\tCasino\tCrime Drama\t\n",
        encoding="utf-8",
    )
    return folder


def test_recbole_round_trip(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "toy")
    data = load_recbole(folder)
    assert data.name == "toy" and data.n_ratings == 4 and data.rating_scale == (1.5, 5.0)
    assert {k: v.kind for k, v in data.user_schema.items()} == {"age": "numeric", "gender": "categorical"}
    assert {k: v.kind for k, v in data.item_schema.items()} == {
        "movie_title": "multi", "genre": "multi", "release_year": "numeric"}
    assert data.items.loc["i1", "genre"] == ("Animation", "Comedy") and data.items.loc["i2", "genre"] is None
    assert pd.isna(data.users.loc["u2", "age"]) and data.users.loc["u1", "age"] == 24
    assert "u3" in data.user_vocab and "u4" in data.user_vocab  # rated-only and attribute-only users both kept
    assert data.ratings["timestamp"].isna().tolist() == [False, False, True, False]
    # the same files through a prefix, the .inter path and load_dataset's dispatch
    for given in (folder / "toy", folder / "toy.inter"):
        assert_same_dataset(data, load_recbole(given))
    assert_same_dataset(data, load_dataset(folder))
    data.save(tmp_path / "saved")
    assert_same_dataset(data, RatingDataset.load(tmp_path / "saved"))


def test_recbole_bad_header(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "toy")
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\tscore:float\nu1\ti1\t5\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_recbole(folder)
    assert str(info.value) == (
        f"{folder / 'toy.inter'}, line 1, field 'rating': required field missing from the header "
        "(has: user_id, item_id, score)"
    )
    (folder / "toy.inter").write_text("user_id:token\titem_id:int\trating:float\nu1\ti1\t5\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1, field 'item_id': unknown field type 'int'"):
        load_recbole(folder)
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\tgood\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_recbole(folder)
    assert str(info.value) == f"{folder / 'toy.inter'}, line 2, field 'rating': 'good' is not a number"


# ---------------------------------------------------------------------------------------------- tabular
def test_table_csv_round_trip(tmp_path: Path) -> None:
    csv = tmp_path / "ratings.csv"
    csv.write_text(
        "uid,movie,stars,when,age,genre\n"
        "007,m1,4.5,2001-09-09T01:46:40Z,31,drama\n"
        "007,m2,3,2001-09-09T01:46:41,31,comedy\n"
        "8,m1,2,,40,drama\n",
        encoding="utf-8",
    )
    mapping = ColumnMapping(user="uid", item="movie", rating="stars", timestamp="when",
                            user_attributes=["age"], item_attributes=("genre",))
    assert mapping.user_attributes == ("age",)
    data = load_table(csv, mapping, rating_scale=(0.5, 5))
    assert data.name == "ratings" and data.rating_scale == (0.5, 5.0)
    assert data.ratings["user_id"].tolist() == ["007", "007", "8"]  # ids stay text: leading zeros survive
    assert data.ratings["timestamp"].iloc[:2].tolist() == [1_000_000_000, 1_000_000_001]
    assert pd.isna(data.ratings["timestamp"].iloc[2])
    assert data.users.loc["007", "age"] == 31 and data.items.loc["m2", "genre"] == "comedy"
    assert data.user_schema["age"].kind == "numeric" and data.item_schema["genre"].kind == "categorical"
    data.save(tmp_path / "saved")
    assert_same_dataset(data, load_dataset(tmp_path / "saved"))


def test_table_formats_agree(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": ["1", "1", "2"], "item_id": ["a", "b", "a"], "rating": [1.0, 5.0, 3.0],
                          "timestamp": [10, 20, 30]})
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "colour": ["red", "blue", "red"]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    frame.to_csv(tmp_path / "r.txt", sep="\t", index=False)
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    reference = load_table(frame, items=items, name="r")
    assert reference.n_items == 3 and reference.items.loc["c", "colour"] == "red"
    for name in ("r.csv", "r.tsv", "r.txt", "r.parquet"):
        loaded = load_table(tmp_path / name, items=tmp_path / "items.csv", name="r")
        assert_same_dataset(reference, loaded, same_meta=False)  # meta records the source path
    assert load_dataset(tmp_path / "r.csv").n_ratings == 3  # a plain file path goes through load_table
    iso = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], unit="s"))
    assert load_table(iso).ratings["timestamp"].tolist() == [10, 20, 30]



def test_table_separate_attribute_tables(tmp_path: Path) -> None:
    """users/items tables keyed by the mapped id name, by user_id/item_id, or by a DataFrame index."""
    (tmp_path / "r.csv").write_text("uid;iid;score\n01;a;1\n02;b;2\n", encoding="utf-8")
    (tmp_path / "users.csv").write_text("uid,country\n01,NO\n02,SE\n03,FI\n", encoding="utf-8")
    mapping = ColumnMapping(user="uid", item="iid", rating="score")
    items = pd.DataFrame({"shape": ["round", "square"]}, index=pd.Index(["a", "b"], name="iid"))
    data = load_table(tmp_path / "r.csv", mapping, users=tmp_path / "users.csv", items=items, sep=";")
    assert data.users["country"].to_dict() == {"01": "NO", "02": "SE", "03": "FI"}  # 03 has no ratings, still kept
    assert data.items.loc["b", "shape"] == "square" and data.n_users == 3
    with pytest.raises(DataError) as info:
        load_table(tmp_path / "r.csv", mapping, items=tmp_path / "users.csv", sep=";")
    assert str(info.value) == f"{tmp_path / 'users.csv'}, field 'iid': id column not found (columns: uid, country)"


def test_table_attribute_kinds_lists_and_integer_ids(tmp_path: Path) -> None:
    """Integer-coded ids are categories, never bucketised numbers: by name (``author_id``) or by override."""
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\nu1,b1,4\nu1,b2,2\nu2,b1,5\n", encoding="utf-8")
    (tmp_path / "items.csv").write_text(
        "item_id,author_id,publisher,pages,tags\nb1,17,3,120,sci-fi|space\nb2,4,3,300,romance\n", encoding="utf-8")
    (tmp_path / "users.csv").write_text("user_id,publisher,age\nu1,1,30\nu2,2,40\n", encoding="utf-8")
    guessed = load_table(tmp_path / "r.csv", items=tmp_path / "items.csv")
    kinds = {name: spec.kind for name, spec in guessed.item_schema.items()}
    assert kinds == {"author_id": "categorical", "publisher": "numeric", "pages": "numeric", "tags": "categorical"}
    given = load_table(tmp_path / "r.csv", users=tmp_path / "users.csv", items=tmp_path / "items.csv",
                       attribute_kinds={"items.publisher": "categorical", "tags": "multi", "users.age": "categorical"},
                       list_separator="|")
    assert given.item_schema["publisher"].kind == "categorical" and given.item_schema["tags"].kind == "multi"
    assert given.user_schema["publisher"].kind == "numeric"  # "items.publisher" names the items table only
    assert given.user_schema["age"].kind == "categorical"
    assert list(given.items.loc["b1", "tags"]) == ["sci-fi", "space"]
    with pytest.raises(ConfigError, match="nope"):
        load_table(tmp_path / "r.csv", items=tmp_path / "items.csv", attribute_kinds={"nope": "categorical"})
