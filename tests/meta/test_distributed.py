"""torch.distributed meta-training (torchrun, gloo on 127.0.0.1, 2 CPU ranks) gives one process's
meta-parameters: through the CLI, after an interrupted run is resumed, after the whole job is killed
(SIGKILL) mid-run and resumed, and for every kernel with random draws per batch
(tests/meta/distributed_worker.py); ranks that disagree on config or data fail with one clear line. Every
launch has a timeout, and the process group a bounded one, so nothing can hang."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, meta_parameters
from metarec.tasks import make_split

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
LAUNCH_TIMEOUT_S = 120
TOLERANCE = 1e-5  # of the largest entry: float rounding of a sum taken in another order

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(), reason="needs torchrun and gloo")]

CLI_CONFIG = """
[data]
dataset = "synthetic"
[model]
kind = "feature-mlp"
embedding_size = 8
hidden = [16]
item_id_embedding = true
item_id_dropout = 0.3
[meta]
meta_batch_size = 7
support_batch_size = 5
l2 = 0.001
[train]
epochs = 1
patience = 5
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, output=subprocess.PIPE) -> subprocess.Popen:
    """``torchrun --nproc-per-node 2`` on 127.0.0.1 with ``args``, started (stdout and stderr to ``output``)."""
    command = [str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "METAREC_DIST_TIMEOUT_S": "60",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, text=True,
                            start_new_session=True)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """:func:`launch`, waited for; the whole job is killed at the timeout."""
    process = launch(*args)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_job(process)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{output[-3000:]}"
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; Linux)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_job(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks, as a crash or a scheduler would: torchrun starts each rank in a
    session of its own, so killing torchrun's process group alone would leave the ranks running."""
    ranks = descendants(process.pid)
    for group in (process.pid, *ranks):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:  # not a group leader, or gone already
            try:
                os.kill(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
    process.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in ranks), "the killed ranks are still running"


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over every tensor, over the largest |entry|."""
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    return diff / max(float(a[k].double().abs().max()) for k in a if a[k].numel())


def single_process_run(config: RunConfig, out: Path) -> Path:
    """The same config trained by one process (this one) into the run folder ``out``."""
    Trainer(config, run_dir=out).fit()
    return out


def saved(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "model.safetensors"))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """``torchrun -m metarec train`` for one epoch (2 ranks)."""
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "run.toml").write_text(CLI_CONFIG)
    result = torchrun("-m", "metarec", "train", "--config", str(folder / "run.toml"), "--no-search",
                      "--out", str(folder / "run"))
    assert result.stdout.count("best epoch 0") == 1, result.stdout[-2000:]  # rank 0 alone prints
    return folder / "run"


def test_two_ranks_equal_one_process(one_epoch_run, tmp_path):
    run = one_epoch_run
    assert {p.name for p in run.iterdir()} >= {"best", "config.toml", "last", "metrics.jsonl"}
    reference = single_process_run(RunConfig.from_toml(run / "config.toml"), tmp_path / "one")
    for name in ("last", "best"):
        found = relative_difference(saved(reference, name), saved(run, name))
        print(f"{name}: max abs difference / largest entry = {found:.2e}")
        assert found <= TOLERANCE
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the initialisation and epoch 0, once


def test_two_ranks_train_an_ensemble_as_one_process_does(tmp_path):
    """``--members 2`` under torchrun: every rank trains each member, rank 0 writes it; the members equal
    one process's (:mod:`metarec.meta.ensemble`)."""
    from metarec.meta.ensemble import member_config, member_checkpoint_dirs

    (tmp_path / "run.toml").write_text(CLI_CONFIG)
    torchrun("-m", "metarec", "train", "--config", str(tmp_path / "run.toml"), "--no-search", "--members", "2",
             "--out", str(tmp_path / "run"))
    run = tmp_path / "run"
    assert [d.parent.name for d in member_checkpoint_dirs(run)] == ["1"]
    assert [p.name for p in (run / "members").iterdir()] == ["1"]  # no rank left a folder half-written
    config = RunConfig.from_toml(run / "config.toml")
    assert config.train.members == 2
    reference = single_process_run(member_config(config, 1), tmp_path / "one")
    found = relative_difference(saved(reference, "best"), saved(run / "members" / "1", "best"))
    assert found <= TOLERANCE, found


def test_a_resumed_distributed_run_equals_an_uninterrupted_one(one_epoch_run, tmp_path):
    """Stopped after epoch 1 (its config said 1 epoch), given 3, resumed under torchrun: one process's 3 epochs."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    config = RunConfig.from_toml(run / "config.toml").override("train", epochs=3)
    (run / "config.toml").write_text(config.to_toml())
    torchrun("-m", "metarec", "train", "--out", str(run), "--resume")
    reference = single_process_run(config, tmp_path / "one")
    found = relative_difference(saved(reference), saved(run))
    print(f"resumed: max abs difference / largest entry = {found:.2e}")
    assert found <= TOLERANCE
    epochs = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4  # the initialisation and epochs 0-2, each once


KILL_EPOCHS = 5
KILL_CONFIG = (CLI_CONFIG.replace("meta_batch_size = 7", "meta_batch_size = 24")
               .replace("epochs = 1\npatience = 5", f"epochs = {KILL_EPOCHS}\npatience = 50\naverage_decay = 0.9"))


def checkpointed_epochs(run: Path) -> int:
    """How many epochs the run's ``last`` checkpoint holds (0 before the first)."""
    try:
        return int(json.loads((run / "last" / "checkpoint.json").read_text())["state"]["epoch"])
    except (OSError, ValueError, KeyError):  # not there yet, or between the two renames of a save
        return 0


def logged_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's ranks in /proc (Linux)")
def test_a_killed_distributed_run_resumes_to_an_uninterrupted_one(tmp_path):
    """``torchrun -m metarec train`` (2 ranks) SIGKILLed whole - torchrun and both ranks - in the middle of
    an epoch after at least one epoch's checkpoint, then ``--resume``d under torchrun: one uninterrupted
    process's meta-parameters (and running average), every epoch logged once, nothing temporary left."""
    (tmp_path / "run.toml").write_text(KILL_CONFIG)
    run = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as log:
        process = launch("-m", "metarec", "train", "--config", str(tmp_path / "run.toml"), "--no-search",
                         "--out", str(run), output=log)
        try:
            deadline = time.monotonic() + LAUNCH_TIMEOUT_S
            while checkpointed_epochs(run) < 1:
                if process.poll() is not None:
                    pytest.fail("torchrun ended before the kill:\n" + (tmp_path / "killed.log").read_text()[-3000:])
                assert time.monotonic() < deadline, f"no checkpoint in {LAUNCH_TIMEOUT_S} s"
                time.sleep(0.02)
            # into the next epoch's meta-batches: about half an epoch (epoch 0's time) after its checkpoint
            first = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
            time.sleep(min(first["seconds"] / 2, 2.0))
        finally:
            kill_job(process)
    assert process.returncode == -signal.SIGKILL
    killed_at, logged = checkpointed_epochs(run), [e for e in logged_epochs(run) if e >= 0]
    assert killed_at >= 1 and len(logged) < KILL_EPOCHS, "the kill came after the run had finished"
    print(f"killed with {killed_at} of {KILL_EPOCHS} epochs checkpointed, {len(logged)} logged")

    torchrun("-m", "metarec", "train", "--out", str(run), "--resume")
    config = RunConfig.from_toml(run / "config.toml")
    reference = single_process_run(config, tmp_path / "one")
    for name, file in (("last", "model.safetensors"), ("last", "average.safetensors"), ("best", "model.safetensors")):
        found = relative_difference(load_file(str(reference / name / file)), load_file(str(run / name / file)))
        print(f"killed and resumed, {name}/{file}: max abs difference / largest entry = {found:.2e}")
        assert found <= TOLERANCE, (name, file)
    assert logged_epochs(run) == list(range(-1, KILL_EPOCHS))  # the initialisation and every epoch, once
    assert not [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".bak"))]


def _worker():
    spec = importlib.util.spec_from_file_location("metarec_distributed_worker", HERE / "distributed_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_kernel_and_mismatched_ranks(tmp_path):
    worker = _worker()
    torchrun(str(HERE / "distributed_worker.py"), str(tmp_path))
    split = make_split(worker.tiny_dataset(), worker.SPLIT)
    for name, config in worker.cases().items():
        trainer, params = worker.train(config, split)
        assert trainer.dist is None
        found = relative_difference(params, load_file(str(tmp_path / f"{name}.safetensors")))
        print(f"{name}: max abs difference / largest entry = {found:.2e}")
        assert found <= TOLERANCE, name
    config_error = (tmp_path / "mismatch-config.txt").read_text()
    assert config_error.startswith("ConfigError: distributed training: rank 1's config differs from rank 0's")
    assert "train.seed = 1 (rank 0: 0)" in config_error and "\n" not in config_error
    data_error = (tmp_path / "mismatch-data.txt").read_text()
    assert data_error.startswith("ConfigError: distributed training: rank 1's data differs from rank 0's")
    assert "sha256" in data_error and "\n" not in data_error
    for rank in (0, 1):  # destroyed with its threads before exit (a group left to exit aborted now and then)
        threads = (tmp_path / f"threads-{rank}.txt").read_text().split()
        assert not [name for name in threads if "gloo" in name], f"rank {rank}: {threads}"
