"""A known user's history in their test tasks, and the tasks that choose how it joins.

A deployed model knows a returning user's earlier ratings. ``add_user_history`` adds them to the user's
test tasks: joined to the support set where the support is of the same kind (old items), or as the
prior the support refines where the support holds ratings of items training never saw (a support of
another kind that the history would outnumber). The defaults were chosen on validation tasks only,
among them ``heavy_user_new_item_tasks``: known users with long histories rating new items (the
comparison is in docs/experiments/few-shot.md, "A known user's history"). Where there are none (published
splits, a dataset without users above ``max_ratings``), ``validation_user_new_item_tasks`` stands in:
validation users' new-item ratings, their old-item validation ratings playing the history. Neither
ever holds a rating a test task holds: under published splits a validation user (carved from the warm
users) is often a test user of the cold-item parts, and their new-item ratings are that test data.
"""

from __future__ import annotations

import numpy as np

from metarec.data.dataset import RatingDataset
from metarec.tasks.config import SplitConfig
from metarec.tasks.taskset import TaskSet, new_item_rows, rank_within

# The defaults: every task gets the history; where it holds new-item support ratings the history sets the prior.
HISTORY_MAX_NEW_SUPPORT: int | None = None
HISTORY_AS_PRIOR = True


def tasks_given_history(tasks: TaskSet, known_items: np.ndarray, max_new_support: int | None) -> np.ndarray | None:
    """Which tasks a known user's history is added to (``TaskSet.with_history``'s ``only``; None: all):
    those with fewer than ``max_new_support`` support ratings of items training never saw.

    Why: a task that already holds many ratings of the kind of item its query asks about (new items)
    predicts them worse when the user's old-item ratings, *joined to its support*, outnumber them. Warm
    tasks have no new-item support ratings, so they always keep the history. K = 10 was the validation
    choice while the history joined the support; the history as the prior (``HISTORY_AS_PRIOR``) for
    every task did better on the same validation tasks, so the default is None (no limit)."""
    if max_new_support is None:
        return None
    return new_item_support_counts(tasks, known_items) < max_new_support


def tasks_with_new_item_support(tasks: TaskSet, known_items: np.ndarray) -> np.ndarray:
    """A bool per task: does its support hold a rating of an item training never saw? In those tasks a
    known user's history sets the prior (``TaskSet.with_history``'s ``as_prior``) instead of joining a
    support set of another kind of item; warm tasks' support is like the history, so it joins it."""
    return new_item_support_counts(tasks, known_items) > 0


def new_item_support_counts(tasks: TaskSet, known_items: np.ndarray) -> np.ndarray:
    """Per task, how many of its support ratings are of items training never saw."""
    return np.bincount(new_item_rows(tasks, known_items)[0], minlength=len(tasks))


def add_user_history(tasks: TaskSet, history: TaskSet, known_items: np.ndarray, max_new_support: int | None,
                     as_prior: bool) -> TaskSet:
    """``tasks`` with their users' ``history`` by the rule: only the tasks ``tasks_given_history`` picks,
    and with ``as_prior``, flagged to set the prior in tasks with new-item support ratings."""
    prior = tasks_with_new_item_support(tasks, known_items) if as_prior else None
    return tasks.with_history(history, only=tasks_given_history(tasks, known_items, max_new_support), as_prior=prior)


def rating_keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, for set operations on ratings."""
    return np.asarray(user, np.int64) * n_items + np.asarray(item, np.int64)


def task_rating_keys(tasks: TaskSet, n_items: int) -> np.ndarray:
    """:func:`rating_keys` of every support and query rating of ``tasks``."""
    rows = tasks.rows()
    return rating_keys(rows["user_idx"], rows["item_idx"], n_items)


def validation_user_new_item_tasks(dataset: RatingDataset, history: TaskSet, new_item_mask: np.ndarray,
                                   config: SplitConfig, seed: int = 0,
                                   exclude: np.ndarray | None = None) -> TaskSet | None:
    """The new-item scenario made of validation users, for a split without heavy users' unused new-item
    ratings (published splits; a dataset where nobody rates more than ``max_ratings``): each user of
    ``history`` (the validation users' old-item tasks) with enough ratings of new items in the dataset
    gives a task of those ratings (a random ``query_size`` as the query, the rest as the support), and
    ``history`` stands in for the meta-train ratings a known user brings. Validation users' data only:
    no meta-train or test user, and no rating of ``history`` itself (those are of old items). ``exclude``
    (:func:`rating_keys`): ratings never to use - the test tasks' (a published split's cold-item parts
    hold warm users' new-item ratings, and a validation user may be one of them). Add the history with
    ``TaskSet.with_history(history)``. None when no user has enough."""
    r = dataset.ratings
    user, item = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    has_history = np.zeros(dataset.n_users, bool)
    has_history[history.user_idx] = True
    usable = has_history[user] & new_item_mask[item]
    if exclude is not None and len(exclude):
        usable &= ~np.isin(rating_keys(user, item, dataset.n_items), exclude)
    rows = np.flatnonzero(usable)
    return _new_item_tasks("validation_new_items", user, item, r["rating"].to_numpy(np.float32), rows, config, seed)


def _new_item_tasks(name: str, user: np.ndarray, item: np.ndarray, rating: np.ndarray, rows: np.ndarray,
                    config: SplitConfig, seed: int) -> TaskSet | None:
    """One task per user of ``rows`` with at least query_size + min_support of them: a seeded random
    ``query_size`` as the query, the rest as the support."""
    if not len(rows):
        return None
    rng = np.random.default_rng(seed)
    rows = rows[np.lexsort((rng.random(len(rows)), user[rows]))]
    _, inverse, sizes = np.unique(user[rows], return_inverse=True, return_counts=True)
    rows = rows[sizes[inverse] >= config.query_size + config.min_support]
    if not len(rows):
        return None
    return TaskSet.from_rows(name, user[rows], item[rows], rating[rows], rank_within(user[rows]) < config.query_size)


def heavy_user_new_item_tasks(dataset: RatingDataset, meta_train: TaskSet, new_item_mask: np.ndarray,
                              config: SplitConfig, seed: int = 0,
                              exclude: np.ndarray | None = None) -> TaskSet | None:
    """Known users with long histories rating new items, made of data no scenario uses: a user with
    more than ``max_ratings`` ratings feeds meta-training with old items only (``heavy_users =
    "chunk"``), and their ratings of new items are in no task. Each such user with enough of them gives
    a task (a random ``query_size`` as the query, the rest as the support) - the new-item scenario
    (known users on new items) for validation, no test user involved. None under published splits or
    when there are none. ``exclude``: ratings never to use, as in :func:`validation_user_new_item_tasks`.
    Add the history with ``TaskSet.with_history(meta_train)``."""
    if config.protocol == "splits":
        return None
    r = dataset.ratings
    user, item = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    counts = np.bincount(user, minlength=dataset.n_users)
    heavy = np.zeros(dataset.n_users, bool)
    heavy[meta_train.user_idx] = True  # known to training (a user whose chunks were all too small is not)
    heavy &= counts > config.max_ratings
    usable = heavy[user] & new_item_mask[item]
    if exclude is not None and len(exclude):
        usable &= ~np.isin(rating_keys(user, item, dataset.n_items), exclude)
    rows = np.flatnonzero(usable)
    return _new_item_tasks("heavy_new_items", user, item, r["rating"].to_numpy(np.float32), rows, config, seed)
