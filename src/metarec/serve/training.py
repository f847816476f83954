"""Meta-training for :meth:`ColdStartRecommender.fit`: frames (or a dataset) in, a servable bundle out."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError, DataError
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.run import RunConfig
from metarec.serve.bundle import Bundle, best_checkpoint_dir, split_catalogue, weights_version


def as_dataset(interactions: pd.DataFrame | RatingDataset, user_attributes: pd.DataFrame | None,
               item_attributes: pd.DataFrame | None, name: str, rating_scale: tuple[float, float] | None
               ) -> RatingDataset:
    """``fit``'s tables as one dataset (a dataset is taken as it is; attribute tables then go inside it)."""
    if isinstance(interactions, RatingDataset):
        if user_attributes is not None or item_attributes is not None:
            raise DataError("pass attribute tables inside the RatingDataset, not beside it")
        return interactions
    if isinstance(interactions, pd.DataFrame):
        return RatingDataset.from_frames(name, interactions, user_attributes, item_attributes, rating_scale=rating_scale)
    raise DataError(f"interactions must be a DataFrame or a RatingDataset, not {type(interactions).__name__}")


def train_bundle(dataset: RatingDataset, config: RunConfig | None, run_dir: str | Path | None, *,
                 search: bool | None, preset: str | None) -> Bundle:
    """Meta-train on ``dataset`` (see :meth:`ColdStartRecommender.fit`) and bundle the best checkpoint with
    the dataset's items, its training popularity and its onboarding panel."""
    from metarec._io import write_json
    from metarec.meta.ensemble import load_members, train_members
    from metarec.meta.recipe import choose_recipe, layered_config
    from metarec.meta.search_journal import SearchJournal
    from metarec.meta.trainer import Trainer
    from metarec.tasks import make_split

    if search is None:
        search = config is None
    fixed: tuple[str, ...] = ()
    if config is not None and preset is not None:
        raise ConfigError("give config or preset, not both (a preset is a configuration)")
    if config is None:
        # the same layering as `metarec train --preset NAME` (the recipe's base under the preset's values;
        # the searched settings the preset sets stay as it says), so both give the same model
        config, fixed = layered_config(None, preset)
    config = config.override("data", dataset=dataset.name)
    split = make_split(dataset, config.split)
    with tempfile.TemporaryDirectory(prefix="metarec-fit-") as tmp:
        directory = Path(run_dir) if run_dir is not None else Path(tmp)
        if search:
            # in a run folder the search keeps a journal: fit again after a crash continues it
            journal = SearchJournal(directory / "search") if run_dir is not None else None
            chosen = choose_recipe(split, config, fixed=fixed, journal=journal)
            write_json(directory / "recipe.json", chosen.to_dict())
            chosen.trainer.write_run(directory)
            if journal is not None:
                journal.remove()
            config = chosen.config
        else:
            Trainer(config, split=split, run_dir=directory).fit()
        train_members(config, split, directory)  # an ensemble's other members (train.members > 1)
        ckpt_dir = best_checkpoint_dir(directory)
        checkpoint = load_checkpoint(ckpt_dir, device=config.train.device)
        members = load_members(directory, checkpoint, device=config.train.device)
        version = weights_version(ckpt_dir, directory)
    counts, panel = split_catalogue(split)
    return Bundle(checkpoint, dataset.items, counts, panel, dataset.name, version, members=members)
