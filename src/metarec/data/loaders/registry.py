"""Datasets known by name: where their files live and which loader reads them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError, DataNotFoundError

ENV_VAR = "METAREC_DATA_DIR"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    folder: str  # sub-folder name under a data dir / cache
    marker: str  # a file whose presence says the folder is complete
    loader: Callable[[Path], RatingDataset]
    # (sibling folder, marker) pairs that must sit next to ``folder`` under the same root
    extras: tuple[tuple[str, str], ...] = ()
    # the items table alone (titles and attributes), for callers that only show titles: no ratings read
    items: Callable[[Path], Any] | None = None
    # the interactions with their raw counts as ratings (Last.fm plays): implicit feedback's confidence
    counts: Callable[[Path], RatingDataset] | None = None


def _ml100k(folder: Path) -> RatingDataset:
    from metarec.data.loaders.movielens import load_ml100k

    return load_ml100k(folder)


def _ml1m(folder: Path) -> RatingDataset:
    from metarec.data.loaders.movielens import load_ml1m

    return load_ml1m(folder)


def _ml1m_imdb(folder: Path) -> RatingDataset:
    from metarec.data.loaders.movielens import load_ml1m

    return load_ml1m(folder, imdb_features=True)  # finds ml-1m-melu-extra/ beside (or inside) ml-1m/


def _ml100k_items(folder: Path) -> Any:
    from metarec.data.loaders.movielens import ml100k_items

    return ml100k_items(folder)


def _ml1m_items(folder: Path) -> Any:
    from metarec.data.loaders.movielens import ml1m_items

    return ml1m_items(folder)


def _lastfm(folder: Path) -> RatingDataset:
    from metarec.data.loaders.lastfm import load_lastfm

    return load_lastfm(folder)


def _lastfm_counts(folder: Path) -> RatingDataset:
    from metarec.data.loaders.lastfm import load_lastfm

    return load_lastfm(folder, raw_counts=True)


REGISTRY: dict[str, DatasetEntry] = {
    "ml-100k": DatasetEntry("ml-100k", "ml-100k", "u.data", _ml100k, items=_ml100k_items),
    "ml-1m": DatasetEntry("ml-1m", "ml-1m", "users.dat", _ml1m, items=_ml1m_items),
    "ml-1m-imdb": DatasetEntry("ml-1m-imdb", "ml-1m", "users.dat", _ml1m_imdb,
                               extras=(("ml-1m-melu-extra", "movies_extrainfos.dat"),)),
    "lastfm": DatasetEntry("lastfm", "hetrec2011-lastfm-2k", "user_artists.dat", _lastfm, counts=_lastfm_counts),
}


def dataset_names() -> list[str]:
    return sorted([*REGISTRY, "synthetic"])


def resolve_folder(name: str, data_dir: str | Path | None = None) -> Path:
    """An explicit ``data_dir``, else ``$METAREC_DATA_DIR``, else the cache; never a download."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}, or a path")
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    else:
        from metarec.data.fetch import cache_dir

        candidates.append(cache_dir())
    for root in candidates:
        for folder in (root / entry.folder, root):
            if (folder / entry.marker).exists() and all(
                (folder.parent / sub / marker).exists() or (folder / sub / marker).exists()
                for sub, marker in entry.extras
            ):
                return folder
    needs = "".join(f" and '{sub}/'" for sub, _ in entry.extras)
    how = (f"or download it once with `metarec data fetch {name}`" if not entry.extras else
           f"(the extra folders have no official download; `metarec data fetch {entry.folder}` gets '{entry.folder}/')")
    raise DataNotFoundError(
        f"dataset {name!r} not found (looked in {', '.join(str(c / entry.folder) for c in candidates)}). "
        f"Provide it one of three ways: pass a folder (data_dir=... / --data-dir), set {ENV_VAR} to a folder "
        f"holding '{entry.folder}/'{needs}, {how}."
    )


def load_dataset(name_or_path: str | Path, *, data_dir: str | Path | None = None,
                 feedback: Literal["explicit", "implicit"] = "explicit",
                 positive_threshold: float | None = None) -> RatingDataset:
    """Load a registered name, a folder saved by :meth:`RatingDataset.save`, RecBole atomic files, or a table.

    ``feedback="implicit"`` keeps the positives (every interaction, or those rated >= ``positive_threshold``)
    with a confidence as rating (:func:`metarec.data.implicit.to_implicit`): 1 for each, except where the
    dataset has raw counts (Last.fm plays), whose log gives it and on which the threshold then applies.
    Never downloads: a missing registered dataset raises :class:`DataNotFoundError` saying how to get it.
    """
    if feedback not in ("explicit", "implicit"):
        raise ConfigError(f"feedback must be 'explicit' or 'implicit', got {feedback!r}")
    if feedback == "explicit":
        if positive_threshold is not None:
            raise ConfigError("positive_threshold applies to feedback='implicit' only")
        return _load(name_or_path, data_dir)
    from metarec.data.implicit import to_implicit

    entry = REGISTRY.get(str(name_or_path))
    if entry is not None and entry.counts is not None:
        counted = entry.counts(resolve_folder(entry.name, data_dir))
        return to_implicit(counted, threshold=positive_threshold, confidence="log")
    return to_implicit(_load(name_or_path, data_dir), threshold=positive_threshold, confidence="binary")


def _load(name_or_path: str | Path, data_dir: str | Path | None) -> RatingDataset:
    key = str(name_or_path)
    if key == "synthetic":  # generated, needs no files: the offline fallback of the demo
        from metarec.data.synthetic import make_synthetic

        return make_synthetic().dataset
    if key in REGISTRY:
        return REGISTRY[key].loader(resolve_folder(key, data_dir))
    path = Path(key)
    if path.is_dir() and (path / "dataset.json").exists():
        return RatingDataset.load(path)
    if path.suffix == ".inter" or (path.is_dir() and any(path.glob("*.inter"))):
        from metarec.data.loaders.recbole import load_recbole

        return load_recbole(path)
    if path.is_file():
        from metarec.data.loaders.tabular import load_table

        return load_table(path)
    raise ConfigError(f"unknown dataset {key!r}; known: {', '.join(dataset_names())}, or a path")


def load_items(config) -> Any:
    """The items table (item_id, title, ...) of a run's ``[data]``, read without its ratings where the
    dataset allows (ML-100K, ML-1M: one small file); None where only the whole dataset would give it, so
    a caller that only shows titles can decide whether that is worth the wait."""
    if config.is_table or config.dataset not in REGISTRY or REGISTRY[config.dataset].items is None:
        return None
    entry = REGISTRY[config.dataset]
    return entry.items(resolve_folder(entry.name, config.data_dir))


def load_data(config) -> RatingDataset:
    """The dataset a run's ``[data]`` section (:class:`metarec.meta.run.DataConfig`) names: a table with
    its column mapping, attribute tables and attribute kinds, or anything :func:`load_dataset` reads; with
    ``feedback = "implicit"`` its positives (:func:`metarec.data.implicit.to_implicit`), as the run trained on."""
    feedback = getattr(config, "feedback", "explicit")
    threshold = getattr(config, "positive_threshold", None)
    if not config.is_table:
        return load_dataset(config.dataset, data_dir=config.data_dir, feedback=feedback, positive_threshold=threshold)
    table = _load_table(config)
    if feedback == "implicit":
        from metarec.data.implicit import to_implicit

        return to_implicit(table, threshold=threshold)
    return table


def _load_table(config) -> RatingDataset:
    """A ``[data]`` table with its column mapping, attribute tables and kinds."""
    from metarec.data.loaders.tabular import ColumnMapping, load_table

    path = Path(config.dataset)
    if config.data_dir is not None and not path.is_absolute():
        path = Path(config.data_dir) / path
    roles = dict(config.columns)
    mapping = ColumnMapping(user=roles.get("user", "user_id"), item=roles.get("item", "item_id"),
                            rating=roles.get("rating", "rating"), timestamp=roles.get("timestamp", "timestamp"))

    def side(name: str | None) -> Path | None:
        if name is None:
            return None
        p = Path(name)
        return Path(config.data_dir) / p if config.data_dir is not None and not p.is_absolute() else p

    return load_table(path, mapping, users=side(config.users), items=side(config.items),
                      attribute_kinds=config.attributes, list_separator=config.list_separator,
                      rating_scale=config.rating_scale)
