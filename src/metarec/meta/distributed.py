"""torch.distributed meta-training (``torchrun --nproc-per-node N -m metarec train ...``): each rank takes
a contiguous share of every meta-batch, the shares' meta-gradients are summed by ``all_reduce``, and every
rank takes the same outer step.

Why the result is one process's: the meta-objective is a mean over the meta-batch's B tasks, so its
gradient is sum_r (n_r / B) g_r, where g_r is what the usual kernel computes for rank r's n_r tasks (the
L2 term, in every g_r, sums back to itself as sum_r n_r / B = 1; a rank without tasks adds zeros). Every
rank forms the same batches from the same seeded shuffle, and builds each batch's inputs - and so its
random draws: support mini-batches, item-id dropout - for the whole batch before keeping its rows, so
the union of the shares is exactly the one-process batch. Rank 0 validates and broadcasts the record, so
every rank selects and stops alike; only rank 0 writes. The ranks' configs and data are compared at start
and their parameters after every epoch, so a disagreement is a one-line error, not a silent divergence.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from metarec.errors import ConfigError, MetarecError
from metarec.meta.learner import MetaLearner
from metarec.tasks import ColdStartSplit
from metarec.tasks.taskset import TaskBatch, TaskSet

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "METAREC_DIST_TIMEOUT_S"  # seconds a collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 1800.0  # rank 0 validates while the others wait: a large dataset's validation fits


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun (``WORLD_SIZE`` > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or not distributed at all: the process that writes files and shows progress."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks, and the collectives the trainer needs."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> torch.Tensor:
        """This rank's contiguous rows of an n-task meta-batch (sizes differ by at most one; empty when n
        is smaller than the world)."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(np.int64)
        return torch.arange(int(bounds[self.rank]), int(bounds[self.rank + 1]), dtype=torch.long)

    def meta_step(self, learner: MetaLearner, batch: TaskBatch, generator: torch.Generator | None) -> float:
        """One outer update from the whole ``batch``, this rank computing its share: the same step, and
        the same loss, as :meth:`MetaLearner.meta_step` in one process (up to float rounding)."""
        if not learner.model.training:
            learner.model.train()
        rows = self.shard(len(batch))
        grads, loss = learner.meta_gradients(batch, generator=generator, rows=rows)
        grads, loss = self.weighted_sum(grads, loss, len(rows) / max(len(batch), 1))
        learner.apply_gradients(grads)
        return loss

    def weighted_sum(self, grads: dict[str, torch.Tensor], loss: float, weight: float
                     ) -> tuple[dict[str, torch.Tensor], float]:
        """sum over ranks of weight * (grads, loss), in float64, one all_reduce; every rank gets the same bits."""
        names = list(grads)
        flat = torch.cat([*(grads[n].detach().reshape(-1).to(torch.float64) for n in names),
                          torch.tensor([loss], dtype=torch.float64, device=self.device)]) * weight
        dist.all_reduce(flat)
        out, start = {}, 0
        for n in names:
            size = grads[n].numel()
            out[n] = flat[start:start + size].view(grads[n].shape).to(grads[n].dtype)
            start += size
        return out, float(flat[-1])

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its result broadcast to every rank (rank 0's error too: the others
        raise instead of waiting for a result that never comes)."""
        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", compute())
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
                failure, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        if failure is not None:
            raise failure
        kind, value = box[0]
        if kind == "error":
            raise MetarecError(f"rank 0 failed: {value}")
        return value

    def check_same(self, what: str, value: dict[str, Any], error: type[MetarecError] = ConfigError) -> None:
        """Every rank's ``value`` (a flat dict) must equal rank 0's; otherwise ``error`` on every rank, one
        line naming the first rank and entries that differ."""
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value)
        for rank, other in enumerate(found[1:], start=1):
            differ = [k for k in sorted(set(other) | set(found[0])) if other.get(k) != found[0].get(k)]
            if differ:
                detail = "; ".join(f"{k} = {other.get(k)!r} (rank 0: {found[0].get(k)!r})" for k in differ[:3])
                more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
                raise error(f"distributed training: rank {rank}'s {what} differs from rank 0's: {detail}{more}")

    def check_run(self, config: dict[str, dict[str, Any]], split: ColdStartSplit, learner: MetaLearner) -> None:
        """At start: every rank must hold the same config (a RunConfig's dict form) and data, and a setting
        whose random draws cannot be split across ranks is refused (one-line errors, on every rank)."""
        self.check_same("config", flat_config(config))
        self.check_same("data", fingerprint(split))
        reason = unsupported(learner)
        if reason is not None:
            raise ConfigError(f"distributed training does not support {reason}")

    def check_parameters(self, learner: MetaLearner, when: str) -> None:
        """The ranks' meta-parameters must be bitwise equal (a cheap digest, compared across ranks)."""
        self.check_same("meta-parameters", {"sha256": parameter_digest(learner), "when": when}, MetarecError)

    def _object_device(self) -> torch.device | None:
        return self.device if dist.get_backend() == "nccl" else None


def join(device: str) -> Group | None:
    """The process group torchrun's environment describes (initialised here once per process: gloo on
    CPU, nccl on CUDA, with a bounded timeout), or None when this is a single process."""
    if not launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.device(device).type == "cuda"
    where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device(device)
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(where)
        # torch's compiler, imported while a process group exists, keeps references to it for good: the
        # group then outlives destroy_process_group and its gloo threads are torn down at interpreter exit,
        # which now and then aborts the process ("terminate called without an active exception", exit -6)
        # after training succeeded. The outer Adam imports it anyway (MetaLearner.optimizer): import it first.
        importlib.import_module("torch._dynamo")

        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        atexit.register(_leave)
        if rank != 0:  # one voice: the other ranks log warnings and errors only
            logging.getLogger("metarec").setLevel(logging.WARNING)
        log.info("distributed meta-training: %d ranks (%s)", world, dist.get_backend())
    elif dist.get_world_size() != world:
        raise MetarecError(f"a process group of {dist.get_world_size()} ranks is already initialised, "
                           f"but WORLD_SIZE is {world}")
    return Group(dist.get_rank(), dist.get_world_size(), where)


def _leave() -> None:
    """Destroy the process group (registered at exit), so that its threads are joined while the
    interpreter is whole."""
    if dist.is_initialized():
        dist.destroy_process_group()


def unsupported(learner: MetaLearner) -> str | None:
    """Why the ranks' shares would not add up to the one-process batch (None: they do). Dropout drawn per
    task inside the vectorised inner loop depends on how many tasks a process holds, so it cannot be split."""
    model = learner.model
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return "model.dropout > 0 (its masks are drawn per task inside the inner loop)"
    if not learner.hoist and getattr(model, "item_id_dropout", 0.0) > 0:
        return ("model.item_id_dropout > 0 with embeddings adapted per task (its masks are drawn per task "
                "inside the inner loop); adapt the head only, or set item_id_dropout = 0")
    return None


def fingerprint(split: ColdStartSplit) -> dict[str, Any]:
    """What the ranks' data must agree on: sizes, and a digest of every meta-train and validation task."""
    digest = hashlib.sha256()
    sets: list[TaskSet] = [split.meta_train, *split.validation.values()]
    for tasks in sets:
        for array in (tasks.user_idx, tasks.support_ptr, tasks.support_item, tasks.support_rating,
                      tasks.query_ptr, tasks.query_item, tasks.query_rating):
            digest.update(np.ascontiguousarray(array).tobytes())
    train = split.meta_train
    return {"users": len(split.dataset.user_vocab), "items": len(split.dataset.item_vocab),
            "meta-train tasks": len(train), "meta-train ratings": int(train.support_ptr[-1] + train.query_ptr[-1]),
            "validation tasks": sum(len(t) for t in split.validation.values()),
            "tasks sha256": digest.hexdigest()[:16]}


def flat_config(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"section.key": value}`` of a RunConfig's dict form (lists as tuples), for :meth:`Group.check_same`."""
    return {f"{section}.{key}": (tuple(v) if isinstance(v, list) else v)
            for section, values in config.items() for key, v in values.items()}


def parameter_digest(learner: MetaLearner) -> str:
    """A digest of the meta-parameters' bytes (on the CPU), to compare ranks exactly."""
    digest = hashlib.sha256()
    for name, p in learner.named_meta_parameters().items():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
