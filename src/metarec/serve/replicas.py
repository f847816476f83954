"""Module replicas that let several threads adapt through one checkpoint at the same time.

``torch.func.functional_call`` swaps a module's parameters in place for the duration of a call, so two
threads adapting through the *same* module object see each other's tensors (torch raises, or worse).
Each concurrent call therefore borrows one of a small pool of replicas: separate module objects that
share every parameter and buffer tensor (read-only here), so a replica costs a few kilobytes, not a
copy of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import queue
import threading
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from metarec.meta.checkpoint import Checkpoint
from metarec.serve.personalizer import Personalizer
from metarec.serve.topk import ApproximateTopK, ExactTopK, HNSWConfig, make_top_k

T = TypeVar("T")


def replica(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its own module objects but the same tensors."""
    learner = checkpoint.learner
    features = checkpoint.features
    tensors = [*learner.model.parameters(), *learner.model.buffers(), *learner.inner_lrs.values(),
               *features.user_features.single.values(), *features.user_features.multi.values(),
               *learner.user_features.single.values(), *learner.user_features.multi.values()]
    memo = {id(t): t for t in tensors}
    return dataclasses.replace(checkpoint, learner=copy.deepcopy(learner, memo))


class ReplicaPool(Generic[T]):
    """Up to ``size`` objects (personalizers over replicas), created on first need; a borrower waits
    when all are in use."""

    def __init__(self, first: T, factory: Callable[[], T], size: int) -> None:
        self._free: queue.LifoQueue[T] = queue.LifoQueue()
        self._free.put(first)
        self._factory = factory
        self._size = size
        self._created = 1
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        try:
            item = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                create = self._created < self._size
                self._created += int(create)
            try:
                item = self._factory() if create else self._free.get()
            except BaseException:
                if create:
                    with self._lock:
                        self._created -= 1
                raise
        try:
            yield item
        finally:
            self._free.put(item)


def personalizer_pool(checkpoint: Checkpoint, size: int, top_k: str = "exact", hnsw: HNSWConfig | None = None,
                      previous: ExactTopK | ApproximateTopK | None = None, members: Sequence[Checkpoint] = ()
                      ) -> tuple[ReplicaPool[Personalizer], Callable[[], Personalizer], ExactTopK | ApproximateTopK]:
    """A pool of up to ``size`` personalizers for single calls, a factory of one more (a batch's; each
    holds the catalogue's Gram matrix, up to ~60 MB, so it is made on first use) and their top-k.

    All are replicas of a private template no call uses: copying (or saving) a module while another
    thread is inside functional_call on it would see that thread's swapped-in tensors. They share one
    catalogue top-k (:mod:`metarec.serve.topk`: an approximate one's index is built here, once per
    catalogue, or kept from ``previous`` when few items changed). ``members``: an ensemble's other
    members; each personalizer then holds a replica of every one (an approximate top-k indexes every
    member's item vectors side by side)."""
    template = replica(checkpoint)
    member_templates = [replica(m) for m in members]
    first_members = [Personalizer(replica(t)) for t in member_templates]
    first = Personalizer(replica(template), members=first_members)
    ranker = make_top_k(top_k, first.learner, first.catalogue_vec, hnsw, previous,
                        members=[(m.learner, m.catalogue_vec) for m in first_members])
    first.ranker = ranker

    def make() -> Personalizer:
        return Personalizer(replica(template), ranker, like=first,
                            members=[Personalizer(replica(t), like=f) for t, f in zip(member_templates, first_members)])

    return ReplicaPool(first, make, size), make, ranker
