"""The synthetic generator at scale: ratings drawn block by block of users, written to Parquet as they come.

Why: :func:`~metarec.data.synthetic.make_synthetic` holds every rating, with its string ids, in pandas
frames - fine up to a few million ratings, not at 50 million. Here the per-user and per-item truth
stays in numpy arrays (a few floats a user), and the ratings of each block of :data:`BLOCK_USERS`
users are drawn from that block's own seeded stream and appended to ``ratings.parquet`` a row group
of :data:`GROUP_USERS` users at a time, so memory holds the truth plus one row group. Users, items,
tastes and the rating model are ``make_synthetic``'s for the same config (the same draws, in the same
order); which items each user rates, when and how, differs (a stream per block instead of one).

The result is a saved-dataset folder (the layout of :meth:`RatingDataset.save`): ``RatingDataset.load``
reads it into memory, :func:`metarec.data.columnar.load_columnar` reads it in chunks into compact columns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metarec._io import atomic_dir, write_json
from metarec.data.dataset import FORMAT_VERSION
from metarec.data.schema import AttributeSpec
from metarec.data.synthetic.generate import (ITEM_SCHEMA, dataset_meta, draw_activity, draw_items, draw_ratings,
                                             draw_users, item_frame, truth_fields)
from metarec.data.synthetic.truth import SyntheticConfig, SyntheticTruth

log = logging.getLogger(__name__)

BLOCK_USERS = 1 << 12  # users per random stream: fixed, so the file never depends on anything else
GROUP_USERS = 8 * BLOCK_USERS  # users per Parquet row group (small blocks keep temporaries in cache)
RATINGS_SCHEMA = pa.schema([
    ("user_id", pa.dictionary(pa.int32(), pa.string())),
    ("item_id", pa.dictionary(pa.int32(), pa.string())),
    ("rating", pa.float32()),
    ("timestamp", pa.int64()),
])


def write_synthetic(config: SyntheticConfig, directory: str | Path, *, name: str = "synthetic") -> Path:
    """Draw ``config``'s dataset into the folder ``directory`` (replaced whole); deterministic in ``config.seed``.

    Block ``b`` (users ``b * BLOCK_USERS`` onwards) draws its ratings from the stream ``(seed, b)``, so
    the same config gives the same file whatever else runs; ``GROUP_USERS`` users make a row group. Ids
    are ``u<k>`` / ``i<k>`` as in ``make_synthetic``, stored dictionary-encoded (an id is written once
    per row group, not per rating).
    """
    rng = np.random.default_rng(config.seed)
    people = draw_users(rng, config)
    catalogue = draw_items(rng, config)
    activity = draw_activity(rng, config, catalogue)
    empty = np.zeros(0, np.int64)
    truth = SyntheticTruth(**truth_fields(config, people, catalogue, activity), rated_user=empty, rated_item=empty,
                           rated_time=empty, rated_value=np.zeros(0))
    user_ids, item_ids = _ids("u", config.n_users), _ids("i", config.n_items)
    n_rows = 0
    with atomic_dir(directory) as tmp:
        with pq.ParquetWriter(tmp / "ratings.parquet", RATINGS_SCHEMA) as writer:
            for first in range(0, config.n_users, GROUP_USERS):
                end = min(first + GROUP_USERS, config.n_users)
                parts = [draw_ratings(np.random.default_rng([config.seed, lo // BLOCK_USERS]), config, truth, activity,
                                      catalogue, lo, min(lo + BLOCK_USERS, end)) for lo in range(first, end, BLOCK_USERS)]
                user, item, time, value = (np.concatenate(column) for column in zip(*parts))
                writer.write_table(pa.table({
                    "user_id": pa.DictionaryArray.from_arrays(pa.array((user - first).astype(np.int32)),
                                                              user_ids.slice(first, end - first)),
                    "item_id": pa.DictionaryArray.from_arrays(pa.array(item.astype(np.int32)), item_ids),
                    "rating": pa.array(value.astype(np.float32)),
                    "timestamp": pa.array(time.astype(np.int64)),
                }, schema=RATINGS_SCHEMA))
                n_rows += len(user)
        users = {"user_id": user_ids}
        for attribute, codes in people.codes.items():
            n_values = dict(config.user_attributes)[attribute]
            values = pa.array([f"{attribute}_{k}" for k in range(n_values)])
            users[attribute] = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), values)
        pq.write_table(pa.table(users), tmp / "users.parquet")
        items = item_frame(catalogue, np.asarray(item_ids.to_pylist(), dtype=object))
        items["tags"] = [list(t) for t in items["tags"]]
        items.to_parquet(tmp / "items.parquet", index=True)
        low, high = config.rating_scale
        write_json(tmp / "dataset.json", {
            "format_version": FORMAT_VERSION,
            "name": name,
            "rating_scale": [float(low), float(high)],
            "user_schema": {a: AttributeSpec("categorical").to_json() for a in people.codes},
            "item_schema": {k: (v if isinstance(v, AttributeSpec) else AttributeSpec(v)).to_json()
                            for k, v in ITEM_SCHEMA.items()},
            "meta": dataset_meta(config, catalogue),
        })
    log.info("synthetic: %d ratings of %d users on %d items written to %s", n_rows, config.n_users,
             config.n_items, directory)
    return Path(directory)


def _ids(prefix: str, n: int) -> pa.Array:
    """``prefix0 .. prefix{n-1}`` as an Arrow string array, built without a Python string per id."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "")
