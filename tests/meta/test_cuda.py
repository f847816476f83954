"""The GPU path, for real: runs only where ``torch.cuda.is_available()`` (skipped otherwise).

* one epoch of ``Trainer`` with ``train.device = "cuda"`` gives the CPU run's meta-parameters and
  validation MAE, for each meta-learning kernel ``--device cuda`` can route to (``meta.kernel`` is chosen
  the same way on every device): ``vmap`` (maml.py, head adapted, and embeddings adapted), ``batched_head``
  and ``one_step`` (each with the fused Adam outer step); every parameter, input and Adam moment stays on
  the GPU;
* ``metarec train --device cuda`` (the CLI runner) writes a run folder that loads on the CPU (and predicts
  as on the GPU), and ``--resume`` on the GPU continues it to an uninterrupted GPU run's parameters;
* the serving ``Personalizer`` loaded on the GPU adapts and scores (one user, several users, top-k) as on
  the CPU, for a batched-head FeatureMLP and a vmap NeuralCF;
* with two GPUs or more: ``torchrun --nproc-per-node 2`` (nccl, one GPU per rank) gives one GPU process's
  meta-parameters.

Tolerance: max |difference| <= 1e-4 of the largest entry (``GPU_TOLERANCE``) for GPU against CPU, and
for two GPU ranks against one GPU process: float32 kernels that sum in another order (cuBLAS, atomic
index_add), amplified a little by Adam over an epoch; a real difference (another random draw, a wrong
step) is 1e-2 or more. Item-id dropout is off in the GPU-against-CPU runs: its masks come from the
device's generator (CUDA's Philox is not the CPU's Mersenne Twister); the support mini-batches are drawn
on the CPU and are the same. TF32 matmuls are switched off for the comparisons.

How to run (a CUDA build of torch; ``make test`` installs the CPU wheel)::

    METAREC_DATA_DIR=... .venv/bin/python -m pytest -q -p no:cacheprovider tests/meta/test_cuda.py
    CUDA_VISIBLE_DEVICES=0 ...          # one GPU: the nccl test is skipped

``METAREC_TEST_DEVICE=cpu`` runs the same checks with "cpu" in place of "cuda" (a dry run of this file's
own logic on a machine without a GPU; the nccl test then runs on gloo).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metarec.data.loaders.registry import load_data
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, load_best, meta_parameters
from metarec.serve.personalizer import Personalizer
from metarec.tasks import SplitConfig, make_split

HERE = Path(__file__).resolve().parent
DEVICE = os.environ.get("METAREC_TEST_DEVICE", "cuda")
GPU_TOLERANCE = 1e-4  # of the largest entry (see the module docstring)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]

SMALL = dict(embedding_size=8, hidden=[16])
CLI_CONFIG = """
[data]
dataset = "synthetic"
[model]
kind = "feature-mlp"
embedding_size = 8
hidden = [16]
item_id_embedding = true
[meta]
meta_batch_size = 16
support_batch_size = 5
l2 = 0.001
[train]
epochs = 1
patience = 5
"""


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """No TF32 (Ampere and later may use it for float32 products): the comparisons are float32's."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture(scope="module")
def split():
    spec = importlib.util.spec_from_file_location("metarec_tests_meta_conftest_cuda", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return make_split(module.tiny_dataset(), SplitConfig(seed=0, test_user_fraction=0.2, val_user_fraction=0.2))


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over every tensor, over the largest |entry| (both on the CPU)."""
    assert a.keys() == b.keys()
    a = {k: v.detach().cpu().double() for k, v in a.items() if v.numel()}
    b = {k: v.detach().cpu().double() for k, v in b.items() if v.numel()}
    return max(float((a[k] - b[k]).abs().max()) for k in a) / max(float(v.abs().max()) for v in a.values())


def kernel_cases() -> dict[str, RunConfig]:
    """One config per kernel ``--device cuda`` can run, each with random support mini-batches."""
    mlp = RunConfig.preset("feature-mlp").override("model", **SMALL, item_id_embedding=True, item_id_dropout=0.0)
    meta = dict(meta_batch_size=8, support_batch_size=4, l2=1e-3)
    return {
        "one_step": mlp.override("meta", **meta, inner_steps=1, kernel="one_step"),
        "batched_head": mlp.override("meta", **meta, inner_steps=2, kernel="batched_head"),
        "vmap_head": mlp.override("meta", **meta, inner_steps=2, kernel="vmap"),
        "vmap_all": RunConfig.preset("neural-cf").override("model", factors=8, hidden=[16], item_id_dropout=0.0)
        .override("meta", **meta, adapt="all", inner_steps=2, kernel="vmap"),
    }


def on_device(tensors, device: str) -> bool:
    return all(t.device.type == torch.device(device).type for t in tensors)


@pytest.mark.parametrize("name", list(kernel_cases()))
def test_one_epoch_on_the_gpu_equals_the_cpu(split, name):
    config = kernel_cases()[name].override("train", epochs=1, patience=1)
    cpu = Trainer(config.override("train", device="cpu"), split=split)
    cpu.fit()
    gpu = Trainer(config.override("train", device=DEVICE), split=split)
    assert gpu.learner.kernel == cpu.learner.kernel == config.meta.kernel
    gpu.fit()
    learner = gpu.learner
    assert on_device(learner.named_meta_parameters().values(), DEVICE)
    assert on_device(learner.model.buffers(), DEVICE)
    assert on_device([*gpu.features.user_features.single.values(), gpu.features.known_items], DEVICE)
    moments = [v for state in learner.optimizer.state.values() for k, v in state.items() if k.startswith("exp_avg")]
    assert moments and on_device(moments, DEVICE)  # Adam's moments on the device
    found = relative_difference(meta_parameters(cpu.learner), meta_parameters(learner))
    print(f"{name}: max abs difference / largest entry, {DEVICE} against cpu = {found:.2e}")
    assert found <= GPU_TOLERANCE, name
    assert gpu.history[-1]["val_mae"] == pytest.approx(cpu.history[-1]["val_mae"], rel=GPU_TOLERANCE)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """``metarec train --device cuda`` for one epoch (the CLI runner, in this process)."""
    from metarec.cli import app

    folder = tmp_path_factory.mktemp("gpu")
    (folder / "run.toml").write_text(CLI_CONFIG)
    result = CliRunner().invoke(app, ["train", "--config", str(folder / "run.toml"), "--no-search",
                                      "--device", DEVICE, "--out", str(folder / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_a_gpu_run_loads_on_the_cpu_and_resumes_on_the_gpu(cli_run, tmp_path):
    config = RunConfig.from_toml(cli_run / "config.toml")
    assert config.train.device == DEVICE
    on_cpu, on_gpu = load_best(cli_run), load_best(cli_run, device=DEVICE)
    assert on_device(on_cpu.learner.model.state_dict().values(), "cpu")
    assert on_device([*on_cpu.features.item_features.single.values(), on_cpu.features.known_items], "cpu")
    assert on_device(on_gpu.learner.model.state_dict().values(), DEVICE)
    assert relative_difference(meta_parameters(on_cpu.learner), meta_parameters(on_gpu.learner)) == 0.0
    assert on_device(load_file(str(cli_run / "last" / "optimizer.safetensors")).values(), "cpu")
    split = make_split(load_data(config.data), config.split)
    for tasks in split.validation.values():  # the same predictions, on either device
        if len(tasks):
            assert on_gpu.learner.evaluate(tasks)["mae"] == pytest.approx(on_cpu.learner.evaluate(tasks)["mae"],
                                                                          rel=GPU_TOLERANCE)
    # resumed on the GPU for a second epoch (the Adam moments loaded onto the device): an uninterrupted
    # two-epoch GPU run
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    two = config.override("train", epochs=2)
    (run / "config.toml").write_text(two.to_toml())
    from metarec.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    reference = Trainer(two, split=split, run_dir=tmp_path / "one")
    reference.fit()
    found = relative_difference(load_file(str(tmp_path / "one" / "last" / "model.safetensors")),
                                load_file(str(run / "last" / "model.safetensors")))
    print(f"resumed on {DEVICE}: max abs difference / largest entry = {found:.2e}")
    assert found <= GPU_TOLERANCE
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # the initialisation and 2 epochs


@pytest.fixture(scope="module")
def neural_cf_run(split, tmp_path_factory) -> Path:
    """A NeuralCF (vmap adaptation, item vectors linear scoring) trained one epoch on the device."""
    config = kernel_cases()["vmap_all"].override("meta", adapt="head").override("train", epochs=1, device=DEVICE)
    out = tmp_path_factory.mktemp("gpu-ncf") / "run"
    Trainer(config, split=split, run_dir=out).fit()
    return out


@pytest.mark.parametrize("which", ["cli_run", "neural_cf_run"])
def test_the_personalizer_adapts_and_scores_on_the_gpu(which, request):
    run = request.getfixturevalue(which)
    cpu, gpu = Personalizer.load(run), Personalizer.load(run, device=DEVICE)
    assert gpu.device.type == torch.device(DEVICE).type and gpu.all_items.device == gpu.device
    ids = cpu.item_vocab.ids
    ratings = {ids[0]: 5.0, ids[3]: 4.0, ids[7]: 1.0, ids[11]: 3.0, "not-an-item": 2.0}
    probe = [ids[i] for i in range(0, len(ids), max(1, len(ids) // 50))]
    one_cpu, one_gpu = cpu.adapt(ratings), gpu.adapt(ratings)
    assert on_device(one_gpu.params.values(), DEVICE) and one_gpu.unknown_item_ids == ["not-an-item"]
    np.testing.assert_allclose(one_gpu.predict(probe), one_cpu.predict(probe), rtol=0, atol=GPU_TOLERANCE * 5)
    top_gpu = one_gpu.recommend(k=10)
    assert len(top_gpu) == 10 and not {i for i, _ in top_gpu} & set(ratings)
    np.testing.assert_allclose([s for _, s in top_gpu], one_cpu.predict([i for i, _ in top_gpu]),
                               rtol=0, atol=GPU_TOLERANCE * 5)  # the GPU's top-k, scored as on the CPU
    users = [(ratings, None), ({ids[2]: 2.0, ids[5]: 5.0}, None)]
    many_cpu, many_gpu = cpu.adapt_many(users), gpu.adapt_many(users)
    scores = many_gpu.catalogue_scores()
    assert scores.shape == (2, len(ids))
    np.testing.assert_allclose(scores, many_cpu.catalogue_scores(), rtol=0, atol=GPU_TOLERANCE * 5)
    assert [len(r) for r in many_gpu.recommend(k=5)] == [5, 5]


@pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.device_count() < 2, reason="needs 2 GPUs (one per nccl rank)")
def test_two_gpu_ranks_under_nccl_equal_one_gpu_process(tmp_path):
    spec = importlib.util.spec_from_file_location("metarec_test_distributed_cuda", HERE / "test_distributed.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    if not launcher.TORCHRUN.exists():
        pytest.skip("needs torchrun")
    # item-id dropout on: every rank draws the whole batch's masks from its own device's generator, seeded alike
    config_text = CLI_CONFIG.replace("[meta]", "item_id_dropout = 0.3\n[meta]")
    (tmp_path / "run.toml").write_text(config_text.replace("[train]", f'[train]\ndevice = "{DEVICE}"'))
    # train.device = "cuda": each rank joins with nccl on cuda:LOCAL_RANK (metarec.meta.distributed.join)
    launcher.torchrun("-m", "metarec", "train", "--config", str(tmp_path / "run.toml"), "--no-search",
                      "--out", str(tmp_path / "run"))
    config = RunConfig.from_toml(tmp_path / "run" / "config.toml")
    Trainer(config, run_dir=tmp_path / "one").fit()
    for name in ("last", "best"):
        found = relative_difference(load_file(str(tmp_path / "one" / name / "model.safetensors")),
                                    load_file(str(tmp_path / "run" / name / "model.safetensors")))
        print(f"{name}: 2 ranks against 1 process on {DEVICE}, max abs difference / largest entry = {found:.2e}")
        assert found <= GPU_TOLERANCE
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
