"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

A checkpoint folder holds ``model.safetensors`` (meta-parameters, learned inner rates, buffers),
``optimizer.safetensors`` (Adam moments, for resuming), ``average.safetensors`` (the running average of the
meta-parameters when training averages them, for resuming), ``features.safetensors`` (encoded user and item
attribute tables) and ``checkpoint.json`` (the run config, the encoders, the vocabularies, the training
state and package versions). A folder is written whole under a temporary name and then renamed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from metarec._io import atomic_dir, jsonable, recover_dir, sha256_file, write_json
from metarec.data.encoding import FeatureEncoder, FeatureTable
from metarec.data.vocab import Vocabulary
from metarec.errors import MetarecError
from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.meta.run import typed_values
from metarec.models.config import ModelConfig, build_model
from metarec.tasks.features import FeatureSpace
from metarec.version import __version__

FORMAT = "metarec-checkpoint"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    versions = {"metarec": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    try:
        import pandas

        versions["pandas"] = pandas.__version__
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return versions


@dataclass
class Checkpoint:
    """Everything needed to rebuild a trained meta-learner and map external ids."""

    learner: MetaLearner
    features: FeatureSpace
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    model_config: ModelConfig
    rating_scale: tuple[float, float]
    run_config: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)  # epoch, best metric, rng, ...
    average: Mapping[str, torch.Tensor] | None = None  # TrainConfig.average_decay's running average


def _optimizer_tensors(learner: MetaLearner) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in learner.named_meta_parameters().items()}
    out: dict[str, torch.Tensor] = {}
    for p, st in learner.optimizer.state.items():
        name = names[id(p)]
        for key, value in st.items():
            out[f"{key}::{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    return out


def _load_optimizer(learner: MetaLearner, tensors: Mapping[str, torch.Tensor]) -> None:
    params = learner.named_meta_parameters()
    state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        kind, name = key.split("::", 1)
        state.setdefault(params[name], {})[kind] = value.clone()
    learner.optimizer.state.clear()
    for p, st in state.items():
        learner.optimizer.state[p] = st


def save_checkpoint(ckpt: Checkpoint, directory: str | Path, *, with_optimizer: bool = True) -> Path:
    """Write ``ckpt`` as safetensors + JSON into ``directory``, replacing any old one whole (a crash
    leaves the old checkpoint or the new one, never a mix: :func:`metarec._io.atomic_dir`)."""
    learner = ckpt.learner
    with atomic_dir(directory) as tmp:
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in learner.model.state_dict().items()}
        model_tensors.update({f"inner_lr.{n}": p.detach().cpu().contiguous() for n, p in learner.inner_lrs.items()})
        save_file(model_tensors, str(tmp / "model.safetensors"))
        feats = {**ckpt.features.user_features.tensors("user"), **ckpt.features.item_features.tensors("item")}
        feats["known_items"] = ckpt.features.known_items.to(torch.uint8)
        save_file({k: v.cpu().contiguous() for k, v in feats.items()}, str(tmp / "features.safetensors"))
        if with_optimizer:
            save_file({k: v.cpu() for k, v in _optimizer_tensors(learner).items()}, str(tmp / "optimizer.safetensors"))
            if ckpt.average is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in ckpt.average.items()},
                          str(tmp / "average.safetensors"))
        user_ids, item_ids = ckpt.user_vocab.to_json(), ckpt.item_vocab.to_json()
        write_json(tmp / "checkpoint.json", {
            "sha256": {path.name: sha256_file(path) for path in sorted(tmp.glob("*.safetensors"))},
            "ids_sha256": _sha256_ids(user_ids, item_ids),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": jsonable(ckpt.model_config),
            "meta_config": jsonable(learner.config),
            "rating_scale": list(ckpt.rating_scale),
            "user_encoder": ckpt.features.user_encoder.to_json(),
            "item_encoder": ckpt.features.item_encoder.to_json(),
            "user_ids": user_ids,
            "item_ids": item_ids,
            "run_config": dict(ckpt.run_config),
            "state": dict(ckpt.state),
            "versions": package_versions(),
        })
    return Path(directory)


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder, verified before it is used: its files match the sha256 recorded at save,
    its configuration has the right types, every tensor has the shape the configuration implies (checked
    before anything is allocated), the vocabularies fit the tables and no weight is NaN or inf. Anything
    else is a :class:`MetarecError` naming the folder, never a raw SafetensorError or IndexError."""
    directory = recover_dir(directory)  # a save a crash interrupted: its backup is the checkpoint
    meta_path = directory / "checkpoint.json"
    if not meta_path.exists():
        raise MetarecError(f"{directory}: not a metarec checkpoint (checkpoint.json is missing)")
    try:
        spec = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetarecError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise MetarecError(f"{meta_path}: unknown checkpoint format {found!r}")
    try:
        return _load(directory, spec, device)
    except MetarecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OSError, SafetensorError) as exc:
        raise MetarecError(f"{directory}: damaged checkpoint ({type(exc).__name__}: {exc})") from None


class _NoRandomFill(TorchFunctionMode):
    """In a meta-device build, in-place random fills return their tensor as it is: only shapes are wanted,
    and filling a meta tensor at random imports torch's compiler (1.6 s, once per process: a one-shot
    ``metarec recommend`` paid it on every call). A mode is per thread, so no other build is touched."""

    FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.random_,
                       torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.trunc_normal_,
                       torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_,
                       torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_, torch.nn.init.orthogonal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FILLS:  # torch.nn.init passes its tensor by keyword
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def _load(directory: Path, spec: Mapping[str, Any], device: str | torch.device) -> Checkpoint:
    _check_digests(directory, spec)
    model_config = ModelConfig(**typed_values("model", ModelConfig, spec["model_config"]))
    meta_config = MetaConfig(**typed_values("meta", MetaConfig, spec["meta_config"]))
    feats = load_file(str(directory / "features.safetensors"))
    features = FeatureSpace(
        FeatureEncoder.from_json(spec["user_encoder"]), FeatureEncoder.from_json(spec["item_encoder"]),
        FeatureTable.from_tensors(feats, "user"), FeatureTable.from_tensors(feats, "item"),
        feats["known_items"].bool(),
    )
    user_vocab, item_vocab = Vocabulary(spec["user_ids"], "user_id"), Vocabulary(spec["item_ids"], "item_id")
    if len(item_vocab) != len(features.item_features) or len(features.known_items) != len(item_vocab):
        raise MetarecError(f"{directory}: {len(item_vocab)} item ids for {len(features.item_features)} items")
    if len(user_vocab) != len(features.user_features):
        raise MetarecError(f"{directory}: {len(user_vocab)} user ids for {len(features.user_features)} users")
    rating_scale = tuple(float(v) for v in spec["rating_scale"])

    def build():
        return build_model(model_config, features.user_encoder, features.item_encoder, features.item_features,
                           known_items=features.known_items, rating_scale=rating_scale)

    model_path = directory / "model.safetensors"
    with torch.device("meta"), _NoRandomFill():  # the configuration's shapes, nothing allocated (embedding_size = 1e6)
        expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    _check_shapes(model_path, expected)
    model = build()
    tensors = load_file(str(model_path))
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise MetarecError(f"{model_path}: {bad} holds NaN or inf values; this model cannot predict")
    inner = {k[len("inner_lr."):]: v for k, v in tensors.items() if k.startswith("inner_lr.")}
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("inner_lr.")})
    model.to(device)
    features = features.to(device)
    learner = MetaLearner(model, meta_config, features.user_features)
    with torch.no_grad():
        for n, p in learner.inner_lrs.items():
            p.copy_(inner[n].to(device))
    opt_path = directory / "optimizer.safetensors"
    if opt_path.exists():
        _load_optimizer(learner, {k: v.to(device) for k, v in load_file(str(opt_path)).items()})
    avg_path = directory / "average.safetensors"
    average = ({k: v.to(device) for k, v in load_file(str(avg_path)).items()} if avg_path.exists() else None)
    return Checkpoint(
        learner=learner, features=features, user_vocab=user_vocab, item_vocab=item_vocab, model_config=model_config,
        rating_scale=rating_scale, run_config=spec.get("run_config", {}), state=spec.get("state", {}),
        average=average,
    )


def _sha256_ids(user_ids: list, item_ids: list) -> str:
    return hashlib.sha256(json.dumps([user_ids, item_ids], separators=(",", ":")).encode("utf-8")).hexdigest()


def _check_digests(directory: Path, spec: Mapping[str, Any]) -> None:
    """The files and id lists are those the save wrote (a checkpoint from before digests has none)."""
    for name, want in dict(spec.get("sha256", {})).items():
        path = directory / Path(name).name
        if not path.is_file():
            raise MetarecError(f"{path}: missing (checkpoint.json lists it)")
        if sha256_file(path) != want:
            raise MetarecError(f"{path}: does not match the sha256 recorded when it was saved (changed or damaged)")
    if "ids_sha256" in spec and _sha256_ids(spec["user_ids"], spec["item_ids"]) != spec["ids_sha256"]:
        raise MetarecError(f"{directory / 'checkpoint.json'}: the user / item id lists were changed after saving")


def _check_shapes(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    with safe_open(str(path), framework="pt") as handle:
        found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys() if not k.startswith("inner_lr.")}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        name = wrong[0]
        raise MetarecError(f"{path}: tensor {name!r} is {found.get(name, 'missing')}, the configuration implies "
                           f"{expected.get(name, 'none')} ({len(wrong)} tensor(s) differ)")
