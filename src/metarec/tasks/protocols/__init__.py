"""The protocols that build a :class:`~metarec.tasks.split.ColdStartSplit`, and the one entry point."""

from __future__ import annotations

from metarec.data.dataset import RatingDataset
from metarec.tasks.config import SplitConfig
from metarec.tasks.protocols.melu import melu_split
from metarec.tasks.protocols.published import load_published_split
from metarec.tasks.split import ColdStartSplit


def make_split(dataset: RatingDataset, config: SplitConfig | None = None) -> ColdStartSplit:
    """Build the four scenarios (and validation tasks) of ``dataset`` under ``config``'s protocol, cut
    to ``support_size`` support ratings if it is set; deterministic in the seed."""
    config = config or SplitConfig()
    if config.protocol == "splits":
        split = load_published_split(dataset, config.split_dir, config)
    else:
        split = melu_split(dataset, config)
    return split if config.support_size is None else split.with_support_size(config.support_size)
