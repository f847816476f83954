"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

A checkpoint folder holds ``model.safetensors`` (meta-parameters, learned inner rates, buffers),
``optimizer.safetensors`` (Adam moments, for resuming), ``average.safetensors`` (the running average of the
meta-parameters when training averages them, for resuming), ``features.safetensors`` (encoded user and item
attribute tables) and ``checkpoint.json`` (the run config, the encoders, the vocabularies, the training
state and package versions). A folder is written whole under a temporary name and then renamed.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from metarec._io import atomic_dir, jsonable, recover_dir, write_json
from metarec.data.encoding import FeatureEncoder, FeatureTable
from metarec.data.vocab import Vocabulary
from metarec.errors import MetarecError
from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
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
        write_json(tmp / "checkpoint.json", {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": jsonable(ckpt.model_config),
            "meta_config": jsonable(learner.config),
            "rating_scale": list(ckpt.rating_scale),
            "user_encoder": ckpt.features.user_encoder.to_json(),
            "item_encoder": ckpt.features.item_encoder.to_json(),
            "user_ids": ckpt.user_vocab.to_json(),
            "item_ids": ckpt.item_vocab.to_json(),
            "run_config": dict(ckpt.run_config),
            "state": dict(ckpt.state),
            "versions": package_versions(),
        })
    return Path(directory)


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    directory = recover_dir(directory)  # a save a crash interrupted: its backup is the checkpoint
    meta_path = directory / "checkpoint.json"
    if not meta_path.exists():
        raise MetarecError(f"{directory}: not a metarec checkpoint (checkpoint.json is missing)")
    spec = json.loads(meta_path.read_text(encoding="utf-8"))
    if spec.get("format") != FORMAT:
        raise MetarecError(f"{meta_path}: unknown checkpoint format {spec.get('format')!r}")
    model_config = ModelConfig(**{**spec["model_config"], "hidden": tuple(spec["model_config"]["hidden"])})
    meta_config = MetaConfig(**spec["meta_config"])
    feats = load_file(str(directory / "features.safetensors"))
    features = FeatureSpace(
        FeatureEncoder.from_json(spec["user_encoder"]), FeatureEncoder.from_json(spec["item_encoder"]),
        FeatureTable.from_tensors(feats, "user"), FeatureTable.from_tensors(feats, "item"),
        feats["known_items"].bool(),
    )
    rating_scale = tuple(spec["rating_scale"])
    model = build_model(model_config, features.user_encoder, features.item_encoder, features.item_features,
                        known_items=features.known_items, rating_scale=rating_scale)
    tensors = load_file(str(directory / "model.safetensors"))
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
        learner=learner, features=features, user_vocab=Vocabulary(spec["user_ids"], "user_id"),
        item_vocab=Vocabulary(spec["item_ids"], "item_id"), model_config=model_config,
        rating_scale=rating_scale, run_config=spec.get("run_config", {}), state=spec.get("state", {}),
        average=average,
    )
