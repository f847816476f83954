"""One rank of tests/meta/test_distributed.py's torchrun launch (not a test module): trains each of
:func:`cases` for one epoch on the tiny dataset, rank 0 saving the meta-parameters as OUT/<case>.safetensors,
then makes the ranks disagree on config and on data and writes the errors to OUT/mismatch-<what>.txt,
and, after the process group's teardown, each rank's thread names to OUT/threads-<rank>.txt.

    torchrun --nproc-per-node 2 ... tests/meta/distributed_worker.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from metarec.meta.run import RunConfig  # noqa: E402
from metarec.tasks import SplitConfig, make_split  # noqa: E402

SPLIT = SplitConfig(seed=0, test_user_fraction=0.2, val_user_fraction=0.2)


def cases() -> dict[str, RunConfig]:
    """One config per kernel, each with random draws per batch and meta-batches that split unevenly
    (3 tasks over 2 ranks; reptile's 1 task leaves a rank without any)."""
    small = dict(embedding_size=8, hidden=[16])
    mlp = RunConfig.preset("feature-mlp").override("model", **small, item_id_embedding=True, item_id_dropout=0.3)
    return {
        "one_step": mlp.override("meta", meta_batch_size=3, support_batch_size=4, l2=1e-3),
        "batched_head": mlp.override("meta", inner_steps=2, meta_batch_size=3, support_batch_size=4, kernel="batched_head"),
        "vmap_all": RunConfig.preset("neural-cf").override("model", factors=8, hidden=[16])
        .override("meta", adapt="all", inner_steps=2, meta_batch_size=3, support_batch_size=4, kernel="vmap"),
        "reptile_pretrain": RunConfig.preset("feature-mlp", "reptile").override("model", **small)
        .override("meta", meta_batch_size=1).override("train", pretrain_epochs=1),
    }


def tiny_dataset(**kwargs):
    """tests/meta/conftest.py's tiny dataset, loaded by path: under pytest the name ``conftest`` is the
    top-level tests/conftest.py, and this file also runs as torchrun's script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("metarec_tests_meta_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_dataset(**kwargs)


def train(config: RunConfig, split):
    """One epoch of ``config`` (single process or distributed, as the environment says)."""
    from metarec.meta.trainer import Trainer, meta_parameters

    trainer = Trainer(config.override("train", epochs=1, patience=1), split=split)
    trainer.fit()
    return trainer, meta_parameters(trainer.learner)


def main(out: Path) -> None:
    from safetensors.torch import save_file

    from metarec.errors import MetarecError

    rank = int(os.environ["RANK"])
    split = make_split(tiny_dataset(), SPLIT)
    for name, config in cases().items():
        trainer, params = train(config, split)
        if trainer.dist is None:
            raise SystemExit("the worker did not see a distributed environment")
        if rank == 0:
            save_file({n: p.contiguous() for n, p in params.items()}, str(out / f"{name}.safetensors"))
    base = cases()["one_step"]
    for what, config, data_seed in (("config", base.override("train", seed=rank), 0), ("data", base, rank)):
        try:
            train(config, make_split(tiny_dataset(seed=data_seed), SPLIT))
            message = "no error"
        except MetarecError as exc:
            message = f"{type(exc).__name__}: {exc}"
        if rank == 0:
            (out / f"mismatch-{what}.txt").write_text(message)
    # the teardown at exit, done now: the process group must be gone with its threads, not left for the
    # interpreter's shutdown to destroy (where it aborted now and then: exit -6, "terminate called
    # without an active exception")
    from metarec.meta import distributed

    distributed._leave()
    (out / f"threads-{rank}.txt").write_text("\n".join(thread_names()))


def thread_names() -> list[str]:
    """This process's native threads' names (Linux; none elsewhere)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return names


if __name__ == "__main__":
    main(Path(sys.argv[1]))
