"""Per-user tasks: each user's support ratings (to adapt on) and query ratings (to score).

Stored compactly (CSR numpy arrays); packed once into padded torch tensors for vectorised
meta-training, then batched by index selection, bucketed by support length to limit padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch


def rank_within(sorted_user: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an array sorted by user."""
    if not len(sorted_user):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    run = np.diff(np.r_[starts, len(sorted_user)])
    return np.arange(len(sorted_user)) - np.repeat(starts, run)


def new_item_rows(tasks: TaskSet, known_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(task, item, rating)`` of every support rating, over all ``tasks``, of an item training never saw.

    Why: items released after training have no learnt parameters, but the support sets of the users
    who rated them at test time do say something about them. Pooling those ratings across tasks is the
    item-side fold-in (``with_new_items``); a task's query ratings are never among them.
    """
    new = ~known_items[tasks.support_item]
    return tasks.support_task[new], tasks.support_item[new], tasks.support_rating[new].astype(np.float64)


@dataclass(frozen=True)
class TaskBatch:
    """Padded tensors of ``B`` tasks. Masks are float (1 = real rating, 0 = padding) to weight losses."""

    user_idx: torch.Tensor  # [B] long
    support_item: torch.Tensor  # [B, S] long
    support_rating: torch.Tensor  # [B, S] float
    support_mask: torch.Tensor  # [B, S] float
    query_item: torch.Tensor  # [B, Q] long
    query_rating: torch.Tensor  # [B, Q] float
    query_mask: torch.Tensor  # [B, Q] float
    support_prior: torch.Tensor | None = None  # [B, S] float, 1 = a history row setting the prior (TaskSet)

    def __len__(self) -> int:
        return int(self.user_idx.shape[0])

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(None if getattr(self, f) is None else getattr(self, f).to(device, non_blocking=True)
                           for f in _FIELDS))

    def select(self, index: torch.Tensor | np.ndarray | list[int]) -> "TaskBatch":
        """Rows ``index``, trimmed to the longest support / query among them."""
        index = torch.as_tensor(index, dtype=torch.long)
        s_len = int(self.support_mask[index].sum(1).max().item()) if len(index) else 0
        q_len = int(self.query_mask[index].sum(1).max().item()) if len(index) else 0
        return TaskBatch(
            self.user_idx[index],
            self.support_item[index, :s_len], self.support_rating[index, :s_len], self.support_mask[index, :s_len],
            self.query_item[index, :q_len], self.query_rating[index, :q_len], self.query_mask[index, :q_len],
            None if self.support_prior is None else self.support_prior[index, :s_len],
        )

    def task(self, i: int) -> dict[str, torch.Tensor]:
        """One task, unpadded (the per-task reference loop uses this)."""
        s = self.support_mask[i] > 0
        q = self.query_mask[i] > 0
        out = {
            "user_idx": self.user_idx[i],
            "support_item": self.support_item[i][s], "support_rating": self.support_rating[i][s],
            "query_item": self.query_item[i][q], "query_rating": self.query_rating[i][q],
        }
        if self.support_prior is not None:
            out["support_prior"] = self.support_prior[i][s]
        return out


_FIELDS = ("user_idx", "support_item", "support_rating", "support_mask", "query_item", "query_rating", "query_mask",
           "support_prior")


@dataclass(frozen=True, eq=False)
class TaskSet:
    """Tasks of one scenario. Row ``t``'s support is ``support_item[support_ptr[t]:support_ptr[t+1]]``.

    ``support_prior`` (bool per support row, or None): the row is a known user's history rating that sets
    the prior the task's own support is adapted around, rather than a support rating like the others
    (see ``with_history``; a model that cannot tell them apart adapts on both alike)."""

    name: str
    user_idx: np.ndarray
    support_ptr: np.ndarray
    support_item: np.ndarray
    support_rating: np.ndarray
    query_ptr: np.ndarray
    query_item: np.ndarray
    query_rating: np.ndarray
    support_prior: np.ndarray | None = None
    _packed: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_rows(
        cls, name: str, user: np.ndarray, item: np.ndarray, rating: np.ndarray, is_query: np.ndarray,
        task: np.ndarray | None = None,
    ) -> "TaskSet":
        """Build from flat rows already sorted by task (order within a task is kept). A task is a user
        unless ``task`` keys say otherwise (one heavy user may give several tasks). Vectorised: each
        task's rows must be contiguous, as sorting by task makes them."""
        key = user if task is None else task
        n = len(key)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n else np.zeros(0, np.int64)
        is_query = np.asarray(is_query, dtype=bool)
        q_counts = np.add.reduceat(is_query.astype(np.int64), starts) if n else np.zeros(0, np.int64)
        s_counts = np.diff(np.append(starts, n)) - q_counts
        s_idx, q_idx = np.flatnonzero(~is_query), np.flatnonzero(is_query)  # rows stay in task order
        return cls(
            name, user[starts].astype(np.int64),
            np.concatenate([[0], np.cumsum(s_counts)]).astype(np.int64), item[s_idx].astype(np.int64),
            rating[s_idx].astype(np.float32),
            np.concatenate([[0], np.cumsum(q_counts)]).astype(np.int64), item[q_idx].astype(np.int64),
            rating[q_idx].astype(np.float32),
        )

    def __post_init__(self) -> None:
        if self.support_prior is not None and len(self.support_prior) != len(self.support_item):
            raise ValueError(f"{self.name}: support_prior has {len(self.support_prior)} flags for "
                             f"{len(self.support_item)} support ratings")

    def __len__(self) -> int:
        return len(self.user_idx)

    @property
    def support_sizes(self) -> np.ndarray:
        return np.diff(self.support_ptr)

    @property
    def support_task(self) -> np.ndarray:
        """The task of every support row."""
        return np.repeat(np.arange(len(self)), self.support_sizes)

    @property
    def query_task(self) -> np.ndarray:
        """The task of every query row."""
        return np.repeat(np.arange(len(self)), self.query_sizes)

    @property
    def query_sizes(self) -> np.ndarray:
        return np.diff(self.query_ptr)

    def support_of(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(self.support_ptr[t], self.support_ptr[t + 1])
        return self.support_item[s], self.support_rating[s]

    def query_of(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        q = slice(self.query_ptr[t], self.query_ptr[t + 1])
        return self.query_item[q], self.query_rating[q]

    def rows(self) -> dict[str, np.ndarray]:
        """All ratings as flat arrays with a task column and a query flag (for baselines and checks)."""
        task = np.concatenate([self.support_task, self.query_task])
        return {
            "task": task,
            "user_idx": self.user_idx[task] if len(task) else np.zeros(0, np.int64),
            "item_idx": np.concatenate([self.support_item, self.query_item]),
            "rating": np.concatenate([self.support_rating, self.query_rating]),
            "is_query": np.concatenate([np.zeros(len(self.support_item), bool), np.ones(len(self.query_item), bool)]),
        }

    def subset(self, keep: np.ndarray, name: str | None = None) -> "TaskSet":
        """Tasks at positions ``keep`` (bool mask or indices)."""
        keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        s_sel = _ranges(self.support_ptr[keep], self.support_sizes[keep])
        q_sel = _ranges(self.query_ptr[keep], self.query_sizes[keep])
        return TaskSet(
            name or self.name, self.user_idx[keep],
            np.concatenate([[0], np.cumsum(self.support_sizes[keep])]).astype(np.int64),
            self.support_item[s_sel.astype(np.int64)], self.support_rating[s_sel.astype(np.int64)],
            np.concatenate([[0], np.cumsum(self.query_sizes[keep])]).astype(np.int64),
            self.query_item[q_sel.astype(np.int64)], self.query_rating[q_sel.astype(np.int64)],
            None if self.support_prior is None else self.support_prior[s_sel.astype(np.int64)],
        )

    def with_support(self, support_keep: np.ndarray, name: str | None = None) -> "TaskSet":
        """Same tasks and queries, support restricted to the flat support positions ``support_keep`` (bool)."""
        counts = np.add.reduceat(support_keep.astype(np.int64), self.support_ptr[:-1]) if len(self) else np.zeros(0, np.int64)
        counts[self.support_sizes == 0] = 0
        return TaskSet(
            name or self.name, self.user_idx,
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            self.support_item[support_keep], self.support_rating[support_keep],
            self.query_ptr, self.query_item, self.query_rating,
            None if self.support_prior is None else self.support_prior[support_keep],
        )

    def with_history(self, history: "TaskSet", name: str | None = None, only: np.ndarray | None = None,
                     as_prior: np.ndarray | None = None) -> "TaskSet":
        """Each task's support preceded by its user's ratings in ``history`` (every task of that user;
        usually the meta-train tasks): a known user is folded in from everything known about them, as
        matrix factorisation does with its trained user factors. History ratings of an item the task
        already holds (in its support or query) are left out, so a query rating can never leak in.
        ``only``: a bool per task; the others keep their support as it is. ``as_prior``: a bool per task
        whose history rows are flagged in ``support_prior`` (they set the prior; None: no task)."""
        h = history.rows()
        if not len(self) or not len(h["task"]) or (only is not None and not np.any(only)):
            return self
        if as_prior is not None and len(as_prior) != len(self):
            raise ValueError(f"as_prior has {len(as_prior)} entries for {len(self)} tasks")
        width = int(max(h["item_idx"].max(), self.support_item.max(initial=0), self.query_item.max(initial=0))) + 1
        # history rows grouped by user; for each task, the slice of its user's rows
        h_order = np.argsort(h["user_idx"], kind="stable")
        h_user, h_item, h_rating = h["user_idx"][h_order], h["item_idx"][h_order], h["rating"][h_order]
        lo, hi = np.searchsorted(h_user, self.user_idx, "left"), np.searchsorted(h_user, self.user_idx, "right")
        if only is not None:
            hi = np.where(np.asarray(only, bool), hi, lo)
        task = np.repeat(np.arange(len(self)), hi - lo)
        rows = np.repeat(lo, hi - lo) + rank_within(task)  # lo..hi-1 for each task
        own = self.rows()
        held = np.isin(task * width + h_item[rows], own["task"] * width + own["item_idx"])
        task, rows = task[~held], rows[~held]
        s_task = self.support_task
        # history first, then the task's own support, task by task
        all_task = np.concatenate([task, s_task])
        first = np.concatenate([np.zeros(len(task), np.int64), np.ones(len(s_task), np.int64)])
        order = np.lexsort((np.arange(len(all_task)), first, all_task))
        items = np.concatenate([h_item[rows], self.support_item])[order]
        ratings = np.concatenate([h_rating[rows], self.support_rating])[order]
        counts = np.bincount(all_task, minlength=len(self))
        prior = None
        if as_prior is not None or self.support_prior is not None:
            own_prior = np.zeros(len(s_task), bool) if self.support_prior is None else self.support_prior
            new_prior = np.zeros(len(task), bool) if as_prior is None else np.asarray(as_prior, bool)[task]
            prior = np.concatenate([new_prior, own_prior])[order]
        return TaskSet(
            name or self.name, self.user_idx, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            items.astype(np.int64), ratings.astype(np.float32), self.query_ptr, self.query_item, self.query_rating,
            prior,
        )

    def as_whole_query(self, name: str | None = None) -> "TaskSet":
        """Each task's every rating as its query (support kept): ordinary supervised training on these
        tasks with no inner step is training one global model on all of the users' ratings."""
        rows = self.rows()
        order = np.lexsort((~rows["is_query"], rows["task"]))
        sizes = self.support_sizes + self.query_sizes
        return TaskSet(
            name or self.name, self.user_idx, self.support_ptr, self.support_item, self.support_rating,
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), rows["item_idx"][order], rows["rating"][order],
            self.support_prior,
        )

    def with_resampled_query(self, generator: np.random.Generator, name: str | None = None) -> "TaskSet":
        """The same tasks with a fresh random support / query partition of each task's ratings (support
        and query sizes kept): meta-training tasks drawn anew each epoch. History flags are dropped."""
        rows = self.rows()
        n = len(rows["task"])
        if n == 0:
            return self
        task = rows["task"]
        order = np.lexsort((generator.random(n), task))  # by task, random within it
        task_sorted = task[order]
        is_query = rank_within(task_sorted) < self.query_sizes[task_sorted]
        s_rows, q_rows = order[~is_query], order[is_query]  # both still grouped by task, in task order
        return TaskSet(
            name or self.name, self.user_idx, self.support_ptr, rows["item_idx"][s_rows], rows["rating"][s_rows],
            self.query_ptr, rows["item_idx"][q_rows], rows["rating"][q_rows],
        )

    def with_short_supports(self, generator: np.random.Generator, fraction: float, max_size: int,
                            name: str | None = None) -> "TaskSet":
        """The same tasks with the support of a random ``fraction`` of them cut to a short length K, drawn
        log-uniformly from 1..``max_size`` (never more than the task has); the ratings cut from a support
        join that task's query, so no rating is lost to the outer loss.

        Why: a newcomer gives one to five ratings, but a meta-train user's task holds dozens. Trained only on
        long supports, the outer loss never sees what the prior and the fold-in do with one rating. History
        flags are dropped (meta-train tasks carry none)."""
        n = len(self)
        if n == 0 or fraction <= 0:
            return self
        cut = generator.random(n) < fraction
        k = np.floor(np.exp(generator.uniform(0.0, np.log(max_size + 1.0), n))).astype(np.int64).clip(1, max_size)
        keep_n = np.where(cut, np.minimum(k, self.support_sizes), self.support_sizes)
        s_task = self.support_task
        keep = rank_within(s_task) < keep_n[s_task]
        # the query: each task's own query rows, then its cut support rows
        q_task = np.concatenate([self.query_task, s_task[~keep]])
        order = np.argsort(q_task, kind="stable")
        q_item = np.concatenate([self.query_item, self.support_item[~keep]])[order]
        q_rating = np.concatenate([self.query_rating, self.support_rating[~keep]])[order]
        q_counts = np.bincount(q_task, minlength=n)
        return TaskSet(
            name or self.name, self.user_idx, np.concatenate([[0], np.cumsum(keep_n)]).astype(np.int64),
            self.support_item[keep], self.support_rating[keep],
            np.concatenate([[0], np.cumsum(q_counts)]).astype(np.int64), q_item.astype(np.int64),
            q_rating.astype(np.float32),
        )

    # ------------------------------------------------------------------ packing
    def packed(self) -> TaskBatch:
        """All tasks as one padded TaskBatch, built once and cached."""
        if "all" not in self._packed:
            items, ratings, mask = _pad(self.support_ptr, self.support_item, self.support_rating)
            prior = None
            if self.support_prior is not None:
                prior = _pad(self.support_ptr, self.support_item, self.support_prior.astype(np.float32))[1]
            self._packed["all"] = TaskBatch(
                torch.as_tensor(self.user_idx, dtype=torch.long), items, ratings, mask,
                *_pad(self.query_ptr, self.query_item, self.query_rating), prior,
            )
        return self._packed["all"]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        bucket: bool = True,
        drop_last: bool = False,
    ) -> Iterator[TaskBatch]:
        """Meta-batches. With ``bucket``, tasks of similar support length share a batch (less padding);
        with ``shuffle``, bucket membership and batch order change from call to call."""
        n = len(self)
        if n == 0:
            return
        packed = self.packed()
        order = generator.permutation(n) if shuffle and generator is not None else np.arange(n)
        if bucket:
            # Sort within windows of 50 batches: keeps randomness across epochs, limits padding.
            window = batch_size * 50
            sizes = self.support_sizes
            chunks = [order[i : i + window] for i in range(0, n, window)]
            order = np.concatenate([c[np.argsort(sizes[c], kind="stable")] for c in chunks])
        groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        if drop_last and len(groups[-1]) < batch_size and len(groups) > 1:
            groups = groups[:-1]
        if shuffle and generator is not None and bucket:
            groups = [groups[i] for i in generator.permutation(len(groups))]
        for g in groups:
            yield packed.select(torch.as_tensor(g, dtype=torch.long))


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``starts[0]..starts[0]+sizes[0]-1``, then the next range, ...: the flat rows of chosen tasks."""
    offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
    return (offsets + np.arange(int(sizes.sum()))).astype(np.int64)


def _pad(ptr: np.ndarray, item: np.ndarray, rating: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sizes = np.diff(ptr)
    n, width = len(sizes), int(sizes.max()) if len(sizes) else 0
    items = np.zeros((n, width), np.int64)
    ratings = np.zeros((n, width), np.float32)
    mask = np.zeros((n, width), np.float32)
    rows = np.repeat(np.arange(n), sizes)
    cols = np.arange(len(item)) - np.repeat(ptr[:-1], sizes)
    items[rows, cols] = item
    ratings[rows, cols] = rating
    mask[rows, cols] = 1.0
    return torch.from_numpy(items), torch.from_numpy(ratings), torch.from_numpy(mask)
