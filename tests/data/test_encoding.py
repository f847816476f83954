"""Attribute encodings: fitted on training rows only, unseen values map to 'unknown', bags are index lists."""

from __future__ import annotations

import pandas as pd
import torch

from metarec.data.encoding import MULTI_UNKNOWN, PAD, UNKNOWN, FeatureEncoder
from metarec.data.schema import AttributeSpec, infer_schema


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "gender": ["F", "M", "F", None],
        "age": [18.0, 30.0, 45.0, float("nan")],
        "genres": [("Drama",), ("Comedy", "Drama"), (), None],
        "title": ["a", "b", "c", "d"],
    }, index=["u1", "u2", "u3", "u4"])


def test_schema_inference_and_override():
    schema = infer_schema(frame(), {"title": "text"})
    assert {k: v.kind for k, v in schema.items()} == {"gender": "categorical", "age": "numeric", "genres": "multi", "title": "text"}


def test_fit_on_training_rows_only_and_unknown_values():
    f = frame()
    schema = infer_schema(f, {"title": "text", "age": AttributeSpec("numeric", bins=(25.0, 40.0))})
    enc = FeatureEncoder.fit(f, schema, rows=[0, 2])  # F only, Drama only
    table = enc.transform(pd.DataFrame({"gender": ["F", "M", None], "age": [20.0, 50.0, None],
                                        "genres": [("Drama", "Western"), ("Comedy",), None]}))
    assert table.single["gender"].tolist() == [1, UNKNOWN, UNKNOWN]  # M never seen in training
    assert table.single["age"].tolist() == [1, 3, UNKNOWN]  # buckets (<25, 25-40, >=40), missing -> 0
    drama = 2  # 0 pad, 1 unknown, 2.. values
    # bag width is the longest training bag (1 here): longer bags are cut, unseen values are "unknown"
    assert table.multi["genres"].tolist() == [[drama], [MULTI_UNKNOWN], [PAD]]
    assert "title" not in enc.cardinalities
    assert enc.cardinalities == {"gender": 2, "age": 4, "genres": 3}


def test_multi_valued_bags_are_padded_index_lists_not_multi_hot():
    f = frame()
    enc = FeatureEncoder.fit(f, infer_schema(f, {"title": "text"}))
    table = enc.transform(f)
    bags = table.multi["genres"]
    assert bags.dtype == torch.long and bags.shape == (4, 2)  # width = longest bag, not vocabulary size
    assert bags[1].tolist() == [2, 3] and bags[2].tolist() == [PAD, PAD]


def test_record_encoding_and_json_round_trip():
    f = frame()
    enc = FeatureEncoder.fit(f, infer_schema(f, {"title": "text"}))
    again = FeatureEncoder.from_json(enc.to_json())
    assert again == enc
    one = again.transform_record({"gender": "M", "genres": ["Comedy"], "unexpected": 1})
    assert one.single["gender"].tolist() == [2] and one.multi["genres"][0, 0].item() == 2
    assert again.transform_record(None).single["gender"].tolist() == [UNKNOWN]


def test_a_table_without_columns_still_counts_its_rows():
    """An id-only dataset: no attribute column, yet every user / item is a row (len, select, safetensors)."""
    from metarec.data.encoding import FeatureTable

    table = FeatureEncoder().transform(pd.DataFrame(index=range(7)))
    assert len(table) == 7 and not table.single and not table.multi
    assert len(table.select(torch.tensor([0, 3, 3]))) == 3
    assert len(FeatureTable.from_tensors(table.tensors("item"), "item")) == 7
