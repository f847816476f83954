"""Item attributes as a sparse one-hot / multi-hot design matrix, for the baselines' ridge regressions.

Why sparse: multi-valued attributes can have thousands of values (the MeLU IMDb features list ~8000
actors over ~3700 movies); a dense multi-hot of that is mostly zeros. The design is built from the
split's :class:`~metarec.tasks.features.FeatureSpace` (encoders fitted on meta-train items only), so a
value first seen on a new item falls in its column's "unknown" slot exactly as for the neural models.

Layout: one block per encoded column. A single-valued column (categorical, bucketised numeric) is a
one-hot over its codes (code 0 - unknown / missing - is a column too). A multi-valued column is the
*mean* of its values' one-hots (padding dropped), so every attribute contributes total weight 1 per row
whatever the number of values, as an ``EmbeddingBag(mode="mean")`` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from metarec.data.encoding import PAD, FeatureEncoder, FeatureTable
from metarec.tasks.features import FeatureSpace, encode_features
from metarec.tasks.split import ColdStartSplit


@dataclass(frozen=True)
class AttributeDesign:
    """``matrix`` (n_items x p, CSR) and the name of each column (``"genres=Drama"``, ``"year#3"``)."""

    matrix: sp.csr_matrix
    names: tuple[str, ...]


def attribute_design(table: FeatureTable, encoder: FeatureEncoder) -> AttributeDesign:
    """The sparse design of every row of ``table`` (see the module docstring for the layout)."""
    n = len(table)
    rows, cols, vals, names = [], [], [], []
    offset = 0
    for column in encoder.columns:
        card = column.cardinality
        if column.kind == "multi":
            codes = table.multi[column.name].numpy()
            r, c = np.nonzero(codes != PAD)
            per_row = np.bincount(r, minlength=n).astype(np.float64)
            rows.append(r)
            cols.append(codes[r, c] + offset)
            vals.append(1.0 / per_row[r])
            labels = ["<pad>", "<unknown>", *column.values]
        else:
            codes = table.single[column.name].numpy()
            rows.append(np.arange(n))
            cols.append(codes + offset)
            vals.append(np.ones(n))
            labels = ["<unknown>", *column.values] if column.kind != "numeric" else [f"#{b}" for b in range(card)]
        names.extend(f"{column.name}={label}" for label in labels[:card])
        offset += card
    if not rows:
        return AttributeDesign(sp.csr_matrix((n, 0)), ())
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, offset), dtype=np.float64
    )
    matrix.sum_duplicates()
    return AttributeDesign(matrix, tuple(names))


def item_design(split: ColdStartSplit, features: FeatureSpace | None = None) -> AttributeDesign:
    """The item attribute design of a split's whole catalogue, encoders fitted on meta-train items only."""
    features = features or encode_features(split)
    return attribute_design(features.item_features, features.item_encoder)
