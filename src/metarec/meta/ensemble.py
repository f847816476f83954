"""An ensemble of meta-learners: the chosen configuration trained from ``train.members`` initialisations,
each new user adapted by every member and the members' predictions averaged.

Why: on validation users the meta-learner's initialisations disagree more than its settings matter. The
mean of three is 0.002-0.006 MAE below one of them at K = 1-5 (ML-100K, Last.fm), and one model with
less noise in its steps (a longer running average, a smaller outer step) does not get it
(docs/experiments/few-shot.md). It costs M trainings and M adaptations per request.

Member 0 is the run itself (its folder's ``best``); member m (1 <= m < M) trains the same configuration
from seed ``train.seed + 1000 m`` into ``RUNDIR/members/m``, a run folder of its own that appears whole
once the member has finished (a killed run resumes with the members already trained; a member cut short
trains again from its start). The benchmark's ``maml-ensemble`` trains its members by the same rule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from metarec._io import atomic_dir
from metarec.errors import MetarecError
from metarec.meta.checkpoint import Checkpoint, load_checkpoint
from metarec.meta.run import RunConfig
from metarec.tasks import ColdStartSplit

log = logging.getLogger(__name__)

MEMBER_SEED_STRIDE = 1000  # member m trains from seed + 1000 m (member 0: the run's own seed)
MEMBERS_DIR = "members"

MemberProgress = Callable[[int, int], None]  # (members done, members in all) after each member


def member_seed_of(seed: int, member: int) -> int:
    """The seed member ``member`` trains from (member 0: the run's own)."""
    return seed + MEMBER_SEED_STRIDE * member


def member_config(config: RunConfig, member: int) -> RunConfig:
    """The configuration member ``member`` trains: the run's, from its own seed (one model: members = 1)."""
    if member < 1:
        raise ValueError(f"member 0 is the run itself; members are numbered from 1, got {member}")
    return config.override("train", seed=member_seed_of(config.train.seed, member), members=1)


def member_dir(run_dir: str | Path, member: int) -> Path:
    return Path(run_dir) / MEMBERS_DIR / str(member)


def train_members(config: RunConfig, split: ColdStartSplit, run_dir: str | Path, *,
                  progress: MemberProgress | None = None) -> list[Path]:
    """Train members 1 .. ``config.train.members`` - 1 of a run into ``run_dir/members`` (those already there
    are kept); their folders, in order. Under torchrun every rank trains and rank 0 writes."""
    from metarec.meta.distributed import is_main_process
    from metarec.meta.trainer import Trainer

    total = config.train.members
    folders = []
    for m in range(1, total):
        target = member_dir(run_dir, m)
        if not (target / "best" / "checkpoint.json").is_file():
            cfg = member_config(config, m)
            log.info("training ensemble member %d of %d (seed %d)", m + 1, total, cfg.train.seed)
            if is_main_process():
                with atomic_dir(target) as tmp:
                    Trainer(cfg, split=split, run_dir=tmp).fit()
            else:  # the same run folder as rank 0 (what a trainer does depends on having one); it writes nothing
                Trainer(cfg, split=split, run_dir=target).fit()
        folders.append(target)
        if progress:
            progress(m, total - 1)
    return folders


def member_checkpoint_dirs(directory: str | Path) -> list[Path]:
    """The other members' checkpoint folders of a run folder (``members/m/best``) or of a saved
    recommender (``members/m``), in member order; none for a single model."""
    root = Path(directory) / MEMBERS_DIR
    if not root.is_dir():
        return []
    numbers = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if numbers != list(range(1, len(numbers) + 1)):
        raise MetarecError(f"{root}: ensemble members must be numbered 1, 2, ... without gaps, found {numbers}")
    out = []
    for m in numbers:
        folder = root / str(m)
        for candidate in (folder / "best", folder):
            if (candidate / "checkpoint.json").is_file():
                out.append(candidate)
                break
        else:
            raise MetarecError(f"{folder}: an ensemble member without a checkpoint (expected {folder}/best)")
    return out


def load_members(directory: str | Path, first: Checkpoint, device: str = "cpu") -> tuple[Checkpoint, ...]:
    """The other members of the model in ``directory`` (see :func:`member_checkpoint_dirs`), checked against
    the first: the same catalogue, users and model."""
    members = tuple(load_checkpoint(d, device=device) for d in member_checkpoint_dirs(directory))
    check_members(first, members, where=str(directory))
    return members


def check_members(first: Checkpoint, members: Sequence[Checkpoint], where: str = "the ensemble") -> None:
    """:class:`MetarecError` unless every member has the first's item and user vocabularies and model kind."""
    for m, member in enumerate(members, start=1):
        if member.item_vocab != first.item_vocab:
            raise MetarecError(f"{where}: ensemble member {m} has another item catalogue than member 0")
        if member.user_vocab != first.user_vocab:
            raise MetarecError(f"{where}: ensemble member {m} was trained on other users than member 0")
        if member.model_config != first.model_config:
            raise MetarecError(f"{where}: ensemble member {m} is another model than member 0")
