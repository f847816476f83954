"""Corrupted inputs must fail with a message that names the file, the line and the field."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from metarec.data.loaders.movielens import load_ml100k, load_ml1m
from metarec.data.loaders.tabular import ColumnMapping, load_table
from metarec.errors import DataError

@pytest.fixture
def ml100k(data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of u.data / u.user / u.item that a test may corrupt."""
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name in ("u.data", "u.user", "u.item"):
        shutil.copyfile(data_dir / "ml-100k" / name, folder / name)
    return folder


def corrupt(path: Path, line: int, replacement: bytes) -> None:
    """Replace 1-based ``line`` of ``path`` (bytes, so encodings can be broken on purpose)."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = replacement
    path.write_bytes(b"\n".join(lines))


def message(exc: pytest.ExceptionInfo[DataError]) -> str:
    return str(exc.value)


@pytest.mark.realdata
def test_rating_not_a_number(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 7, b"115\t265\tx\t881171488")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 7, field 'rating': 'x' is not a number"
    assert "u.data" in message(info) and "line 7" in message(info) and "field 'rating'" in message(info)
    assert (info.value.line, info.value.field) == (7, "rating")


@pytest.mark.realdata
def test_missing_field(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 5, b"166\t346\t1")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 5, field 'timestamp': expected at least 4 fields, found 3"


@pytest.mark.realdata
def test_extra_field(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 9, b"166\t346\t1\t886397596\t99")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 9: expected at most 4 fields, found 5"


@pytest.mark.realdata
def test_empty_required_value(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 3, b"22\t\t1\t878887116")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 3, field 'item_id': empty value"


@pytest.mark.realdata
def test_rating_out_of_range(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 11, b"286\t1014\t9\t879781125")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 11, field 'rating': rating '9' is not in [1, 5]"


@pytest.mark.realdata
def test_nan_rating(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 2, b"186\t302\tnan\t891717742")
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 2, field 'rating': 'nan' is not a number"


@pytest.mark.realdata
def test_latin1_bytes_in_utf8_file(ml100k: Path) -> None:
    corrupt(ml100k / "u.data", 12, "200\t222\t5\t876042340 caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_ml100k(ml100k)
    assert message(info) == f"{ml100k / 'u.data'}, line 12: cannot decode byte 0xe9 as utf-8"


def test_latin1_bytes_in_utf8_csv(tmp_path: Path) -> None:
    csv = tmp_path / "ratings.csv"
    csv.write_bytes("user_id,item_id,rating\n1,caf\u00e9,4\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_table(csv)
    assert str(info.value) == f"{csv}, line 2: cannot decode byte 0xe9 as utf-8"


def test_ml1m_short_line_names_line_and_field(tmp_path: Path) -> None:
    """3 fields are fine in ML-1M (no timestamp); 2 are not."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1::5::978824268\n2::1::4\n3::2\n", encoding="latin-1")
    (folder / "users.dat").write_text("1::F::1::10::48067\n", encoding="latin-1")
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n", encoding="latin-1")
    with pytest.raises(DataError) as info:
        load_ml1m(folder)
    assert message(info) == f"{folder / 'ratings.dat'}, line 3, field 'rating': expected at least 3 fields, found 2"


@pytest.mark.realdata
def test_csv_missing_mapped_rating_column(ml100k: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(ml100k / "u.data", sep="\t", names=["user", "item", "score", "ts"], nrows=50)
    csv = tmp_path / "ratings.csv"
    frame.to_csv(csv, index=False)
    mapping = ColumnMapping(user="user", item="item", rating="stars", timestamp="ts")
    with pytest.raises(DataError) as info:
        load_table(csv, mapping)
    assert message(info) == f"{csv}, field 'stars': rating column not found (columns: user, item, score, ts)"
    # the same mapping on a missing timestamp column
    with pytest.raises(DataError) as info:
        load_table(csv, ColumnMapping(user="user", item="item", rating="score", timestamp="when"))
    assert message(info) == f"{csv}, field 'when': timestamp column not found (columns: user, item, score, ts)"


def test_csv_nan_rating_names_line(tmp_path: Path) -> None:
    csv = tmp_path / "ratings.csv"
    csv.write_text("user_id,item_id,rating\n1,10,4\n1,11,\n2,10,x\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(csv)
    assert message(info) == f"{csv}, line 3, field 'rating': rating is missing (NaN) (line 1 is the header)"
    csv.write_text("user_id,item_id,rating\n1,10,4\n2,10,x\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(csv)
    assert message(info) == f"{csv}, line 3, field 'rating': rating 'x' is not a finite number (line 1 is the header)"
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "rating": [4.0, float("nan")]})
    with pytest.raises(DataError) as info:
        load_table(frame)
    assert message(info) == "<DataFrame>, line 2, field 'rating': rating is missing (NaN) (1-based row of the DataFrame)"


def test_csv_bad_timestamp(tmp_path: Path) -> None:
    csv = tmp_path / "ratings.csv"
    csv.write_text("user_id,item_id,rating,timestamp\n1,10,4,2001-09-09\n1,11,3,yesterday\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(csv)
    assert message(info) == (f"{csv}, line 3, field 'timestamp': timestamp 'yesterday' is neither a number "
                             "nor an ISO datetime (line 1 is the header)")


@pytest.mark.realdata
def test_duplicates_policy(ml100k: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.read_csv(ml100k / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"], nrows=100)
    repeats = frame.iloc[[0, 0, 1]].assign(rating=[1, 2, 5], timestamp=[1, 2, 3])  # old timestamps
    csv = tmp_path / "dups.csv"
    pd.concat([frame, repeats]).to_csv(csv, index=False)
    first = frame.iloc[0]

    with caplog.at_level(logging.WARNING, logger="metarec"):
        last = load_table(csv, duplicates="last")
    assert f"{csv}: 3 duplicate (user, item) ratings dropped, latest kept" in caplog.messages
    assert last.n_ratings == 100
    kept = last.ratings.set_index(["user_id", "item_id"]).loc[(str(first.user_id), str(first.item_id))]
    assert kept["rating"] == first.rating  # the original rating has the latest timestamp

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metarec"):
        mean = load_table(csv, duplicates="mean")
    assert f"{csv}: 3 duplicate (user, item) ratings averaged" in caplog.messages
    averaged = mean.ratings.set_index(["user_id", "item_id"]).loc[(str(first.user_id), str(first.item_id))]
    assert averaged["rating"] == pytest.approx((first.rating + 1 + 2) / 3)

    with pytest.raises(DataError) as info:
        load_table(csv, duplicates="error")
    assert message(info) == (f"{csv}, line 1: duplicate (user_id, item_id) pair "
                             f"({first.user_id}, {first.item_id})")

    # MovieLens itself has no duplicates, so its loader refuses them outright
    with open(ml100k / "u.data", "ab") as handle:
        handle.write(b"196\t242\t1\t881250950\n")
    with pytest.raises(DataError, match=r"duplicate \(user_id, item_id\) pair \(196, 242\)"):
        load_ml100k(ml100k)


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_first_row_with_a_field_too_many_is_refused_not_shifted(tmp_path):
    from metarec.data.loaders.tabular import load_table

    path = _write(tmp_path / "r.csv", "user_id,item_id,rating\n1,10,4,99\n1,11,3\n2,10,5\n")
    with pytest.raises(DataError, match=r"r.csv, line 2: more fields than the header's 3 \(user_id, item_id, rating\)"):
        load_table(path)


@pytest.mark.parametrize("text,message", [("", "the file is empty"), ("user_id,item_id,rating\n", "no ratings")])
def test_empty_tables_are_refused(tmp_path, text, message):
    from metarec.data.loaders.tabular import load_table

    with pytest.raises(DataError, match=message):
        load_table(_write(tmp_path / "r.csv", text))


@pytest.mark.parametrize("typo", ["50", "1e300", "-400"])
def test_a_typo_does_not_become_the_rating_scale(tmp_path, typo):
    from metarec.data.loaders.tabular import load_table

    rows = [f"{u},{i},{1 + (u * 7 + i) % 5}" for u in range(20) for i in range(10)]
    rows[57] = f"5,7,{typo}"
    path = _write(tmp_path / "r.csv", "user_id,item_id,rating\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"line 59.*rating {re.escape(f'{float(typo):g}')} is far outside the others.*set rating_scale"):
        load_table(path)
    rows[57] = "5,7,5"
    assert load_table(_write(path, "user_id,item_id,rating\n" + "\n".join(rows) + "\n")).rating_scale == (1.0, 5.0)


@pytest.mark.realdata
@pytest.mark.parametrize("spelling", [b"0115", b"+115", b"115.0", b" 1e2"])
def test_another_spelling_of_an_id_is_refused_not_a_phantom_user(ml100k: Path, spelling: bytes) -> None:
    corrupt(ml100k / "u.data", 7, spelling + b"\t265\t4\t881171488")
    with pytest.raises(DataError, match="is not a plain integer id") as info:
        load_ml100k(ml100k)
    assert (info.value.line, info.value.field) == (7, "user_id")


@pytest.mark.parametrize("stamp,shown", [("1e30", "1e\\+30"), ("inf", "inf"), ("-inf", "-inf")])
def test_a_timestamp_no_clock_can_show_names_its_line(tmp_path, stamp, shown):
    from metarec.data.loaders.tabular import load_table

    path = _write(tmp_path / "r.csv", f"user_id,item_id,rating,timestamp\n1,10,4,100\n1,11,3,{stamp}\n2,10,5,200\n")
    with pytest.raises(DataError, match=rf"r.csv, line 3, field 'timestamp': timestamp {shown} is not a time"):
        load_table(path)


@pytest.mark.parametrize("column,values,message", [
    ("user_id", [True, True, False, False], "user ids are true / false values, not ids"),
    ("item_id", [b"a", b"b", b"a", b"c"], r"line 1, field 'item_id': item id b'a' is a bytes, not text or an integer"),
    ("item_id", [["a"], ["b"], ["a"], ["c"]], r"field 'item_id': item id .* is a ndarray, not text or an integer"),
    ("user_id", [1.0, 1.0, 2.5, 2.0], r"line 3, field 'user_id': user id 2.5 is not an id"),
    ("rating", [True, False, True, True], "ratings are true / false values, not numbers"),
])
def test_parquet_values_of_the_wrong_type_are_refused_not_turned_into_text(tmp_path, column, values, message):
    from metarec.data.loaders.tabular import load_table

    frame = pd.DataFrame({"user_id": ["1", "1", "2", "2"], "item_id": ["a", "b", "a", "c"], "rating": [4.0, 3.0, 5.0, 1.0]})
    frame[column] = values
    frame.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(DataError, match=message):
        load_table(tmp_path / "r.parquet")


def test_parquet_whole_float_ids_read_as_integers(tmp_path):
    from metarec.data.loaders.tabular import load_table

    pd.DataFrame({"user_id": [1.0, 1.0, 2.0, 2.0], "item_id": [7, 8, 7, 9], "rating": [4.0, 3.0, 5.0, 1.0]}
                 ).to_parquet(tmp_path / "r.parquet")
    assert sorted(load_table(tmp_path / "r.parquet").ratings["user_id"].unique()) == ["1", "2"]


@pytest.mark.parametrize("ratings,message", [
    ([1e300] * 4, "too large to store"),
    ([5.0] * 4, "every rating is 5: nothing to learn a scale from"),
    ([b"5.0", b"3.0", b"4.0", b"1.0"], r"rating b'5.0' is a bytes, not a number"),
])
def test_ratings_that_cannot_make_a_scale_are_refused(tmp_path, ratings, message):
    from metarec.data.loaders.tabular import load_table

    frame = pd.DataFrame({"user_id": ["1", "1", "2", "2"], "item_id": ["a", "b", "a", "c"], "rating": ratings})
    frame.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(DataError, match=message):
        load_table(tmp_path / "r.parquet")


def test_the_inferred_scale_holds_the_stored_ratings(tmp_path):
    """Ratings are stored as float32: the scale is taken from those values, so none falls outside it."""
    from metarec.data.loaders.tabular import load_table

    frame = pd.DataFrame({"user_id": ["1", "1", "2", "2"], "item_id": ["a", "b", "a", "c"],
                          "rating": [0.31682382070903736, 8.89013977069738, 5.1, 1.2]})
    data = load_table(frame)
    low, high = data.rating_scale
    assert data.ratings["rating"].min() >= low and data.ratings["rating"].max() <= high
