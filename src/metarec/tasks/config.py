"""How a dataset becomes cold-start tasks: the split's settings, and the scenarios it builds.

Scenarios (MeLU's four states):

* ``warm`` - meta-train users on old items: support = the ratings meta-training saw, query = 10
  held-out ratings of theirs that meta-training never saw;
* ``new_users`` - test users on old items;
* ``new_items`` - meta-train users on new items (never seen in meta-training);
* ``new_users_new_items`` - test users on new items.

Validation users (carved from the meta-train users) give ``new_users`` and ``new_users_new_items``
tasks for model selection; test users are never looked at until the final evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metarec.errors import ConfigError

SCENARIOS = ("warm", "new_users", "new_items", "new_users_new_items")


@dataclass(frozen=True)
class SplitConfig:
    """How to turn a dataset into cold-start tasks.

    ``protocol``: ``melu`` picks each task's query at random; ``time`` takes a user's latest ratings as
    the query and the earlier ones as support (users without timestamps are left out); ``splits``
    reads a peer's published split files from ``split_dir`` (see :mod:`metarec.tasks.protocols.published`).
    ``min_ratings`` / ``max_ratings``: MeLU keeps users with 13-100 ratings. A task needs
    ``query_size + min_support`` ratings in its scenario. Validation users are ``val_user_fraction`` of the
    non-test users, but at least ``min_val_users`` (never more than half of them): model selection on a
    few dozen users of a small dataset is mostly noise. ``support_size`` fixes K support ratings in
    validation and test tasks (for K-curves; tasks with fewer are dropped). New items: released in or
    after ``new_item_year`` if given (else the dataset's own rule), else the ``new_item_fraction`` of
    items first rated latest. ``heavy_users``: users with more than ``max_ratings`` ratings are never
    test or validation users; ``drop`` leaves them out (MeLU's literal protocol), ``chunk`` gives their
    old-item ratings to meta-training as several tasks of at most ``max_ratings`` ratings each, so item
    representations learn from all the training data that baselines see too.
    """

    protocol: Literal["melu", "time", "splits"] = "melu"
    query_size: int = 10
    min_support: int = 3
    min_ratings: int = 13
    max_ratings: int = 100
    test_user_fraction: float = 0.2
    val_user_fraction: float = 0.1
    min_val_users: int = 0
    user_split: Literal["random", "time"] = "random"
    new_item_year: int | None = None
    new_item_fraction: float = 0.2
    support_size: int | None = None
    split_dir: str | None = None
    heavy_users: Literal["drop", "chunk"] = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in ("melu", "time", "splits"):
            raise ConfigError(f"protocol must be 'melu', 'time' or 'splits', got {self.protocol!r}")
        if self.protocol == "splits" and not self.split_dir:
            raise ConfigError("protocol 'splits' needs split_dir (a folder of published split files)")
        if self.user_split not in ("random", "time"):
            raise ConfigError(f"user_split must be 'random' or 'time', got {self.user_split!r}")
        if self.query_size < 1 or self.min_support < 1:
            raise ConfigError("query_size and min_support must be >= 1")
        if not 0 < self.test_user_fraction < 1 or not 0 <= self.val_user_fraction < 1:
            raise ConfigError("user fractions must be in (0, 1)")
        if not 0 < self.new_item_fraction < 1:
            raise ConfigError("new_item_fraction must be in (0, 1)")
        if self.min_val_users < 0:
            raise ConfigError(f"min_val_users must be >= 0, got {self.min_val_users}")
        if self.min_ratings > self.max_ratings:
            raise ConfigError("min_ratings must be <= max_ratings")
        if self.support_size is not None and self.support_size < 1:
            raise ConfigError("support_size must be >= 1")
        if self.heavy_users not in ("drop", "chunk"):
            raise ConfigError(f"heavy_users must be 'drop' or 'chunk', got {self.heavy_users!r}")


def validation_user_count(config: SplitConfig, candidates: int) -> int:
    """How many of ``candidates`` non-test users validate: the fraction, at least ``min_val_users`` (at
    most half the candidates)."""
    n = int(round(config.val_user_fraction * candidates))
    return max(n, min(config.min_val_users, candidates // 2)) if config.val_user_fraction > 0 else 0
