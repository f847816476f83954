"""A checkpoint is verified before it is used: tampered or damaged files, NaN weights, id lists that do
not fit, absurd configuration values - each a MetarecError naming the folder and what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from metarec.errors import ConfigError, MetarecError
from metarec._io import sha256_file
from metarec.meta.checkpoint import _sha256_ids, load_checkpoint
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer


@pytest.fixture(scope="module")
def saved(tiny_split, tmp_path_factory) -> Path:
    split, _ = tiny_split
    run = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(RunConfig.preset("feature-mlp", "maml").override("train", epochs=1), split=split, run_dir=run).fit()
    return run / "best"


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "best"))


def edit_spec(folder: Path, change) -> None:
    spec = json.loads((folder / "checkpoint.json").read_text())
    change(spec)
    (folder / "checkpoint.json").write_text(json.dumps(spec))


def rewrite_weights(folder: Path, change, *, fix_digest: bool) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    if fix_digest:  # as if the model had been saved this way (a diverged training)
        edit_spec(folder, lambda spec: spec["sha256"].__setitem__(path.name, sha256_file(path)))


def test_an_intact_checkpoint_loads_and_one_without_digests_too(copy):
    assert load_checkpoint(copy).learner is not None
    edit_spec(copy, lambda spec: (spec.pop("sha256"), spec.pop("ids_sha256")))  # written before digests existed
    assert len(load_checkpoint(copy).item_vocab) > 0


def test_nan_weights_are_refused(copy):
    rewrite_weights(copy, lambda t: t[next(k for k in t if "head" in k)].fill_(float("nan")), fix_digest=True)
    with pytest.raises(MetarecError, match=r"model.safetensors: head\..* holds NaN or inf values"):
        load_checkpoint(copy)


def test_changed_weights_do_not_match_their_digest(copy):
    rewrite_weights(copy, lambda t: t[next(iter(t))].mul_(2), fix_digest=False)
    with pytest.raises(MetarecError, match="model.safetensors: does not match the sha256 recorded"):
        load_checkpoint(copy)


def test_id_lists_that_were_changed_or_do_not_fit(copy):
    edit_spec(copy, lambda spec: spec.__setitem__("item_ids", spec["item_ids"][::-1]))
    with pytest.raises(MetarecError, match="id lists were changed after saving"):
        load_checkpoint(copy)

    def one_short(spec):
        spec["item_ids"] = spec["item_ids"][1:][::-1]
        spec["ids_sha256"] = _sha256_ids(spec["user_ids"], spec["item_ids"])

    edit_spec(copy, one_short)
    with pytest.raises(MetarecError, match=r"item ids for \d+ items"):
        load_checkpoint(copy)


def test_absurd_sizes_fail_on_shapes_before_anything_is_allocated(copy):
    edit_spec(copy, lambda spec: spec["model_config"].__setitem__("embedding_size", 1_000_000))
    with pytest.raises(MetarecError, match=r"tensor '.*' is \(\d+, \d+\), the configuration implies \(\d+, \d{7,}\)"):
        load_checkpoint(copy)


def test_absurd_inner_steps_are_refused(copy):
    edit_spec(copy, lambda spec: spec["meta_config"].__setitem__("inner_steps", 10 ** 9))
    with pytest.raises(ConfigError, match="inner_steps must be between 0 and 1000"):
        load_checkpoint(copy)
    edit_spec(copy, lambda spec: spec["meta_config"].__setitem__("inner_steps", "many"))
    with pytest.raises(ConfigError, match=r"\[meta\] inner_steps = 'many'"):
        load_checkpoint(copy)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_files_are_one_clear_error(copy, damage):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    edit_spec(copy, lambda spec: spec.pop("sha256"))  # no digest to catch it first
    with pytest.raises(MetarecError, match=r"damaged checkpoint \(SafetensorError"):
        load_checkpoint(copy)


def test_checkpoint_json_that_is_not_json(copy):
    (copy / "checkpoint.json").write_text("{not json")
    with pytest.raises(MetarecError, match="checkpoint.json: not valid JSON"):
        load_checkpoint(copy)
    (copy / "checkpoint.json").write_text("[1, 2]")
    with pytest.raises(MetarecError, match="unknown checkpoint format 'list'"):
        load_checkpoint(copy)
