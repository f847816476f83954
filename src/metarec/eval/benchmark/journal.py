"""A benchmark's finished (seed, method) units on disk, so that a killed ``metarec benchmark`` resumes.

Why: a benchmark of every method over three seeds runs for one to three hours on a laptop-class machine
(MetaHIN's splits: 135 min), and its results were written only at the end. The journal (``OUT/partial``)
keeps the benchmark's configuration and, for each method fitted and scored on a seed, everything that unit
adds to the results: its rows, its per-task errors (the paired tests' unit), its validation score and its
history. Resumed (``metarec benchmark ... --resume``), the run loads the finished units instead of fitting
them again and fits only the rest; every unit is seeded, so the results are the uninterrupted run's. The
journal is JSON with NaN kept as NaN (a unit must come back exactly as it was computed), never pickle.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from metarec._io import jsonable, write_json, write_text
from metarec.errors import MetarecError

log = logging.getLogger(__name__)


class BenchmarkJournal:
    """``folder`` (``OUT/partial``): see the module docstring."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def open(self, config: Mapping[str, Any], resume: bool) -> None:
        """Start a journal for a benchmark of ``config`` (an old one in the folder is dropped), or, with
        ``resume``, continue the one there, which must be of the same configuration."""
        wanted = jsonable(dict(config))
        if not resume:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / "config.json", wanted)
            return
        path = self.folder / "config.json"
        if not path.is_file():
            raise MetarecError(f"{self.folder}: no benchmark to resume (config.json is missing)")
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != wanted:
            differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise MetarecError(f"{self.folder}: the benchmark recorded there differs in {differ}; run it without "
                               "--resume to start over")

    def _path(self, seed: int, method: str) -> Path:
        return self.folder / f"seed-{seed}-{method}.json"

    def load(self, seed: int, method: str) -> dict[str, Any] | None:
        """The finished unit of ``method`` on ``seed`` (None: not finished)."""
        path = self._path(seed, method)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MetarecError(f"{path}: unreadable ({exc}); delete it to fit that method again") from None

    def save(self, seed: int, method: str, unit: Mapping[str, Any]) -> None:
        """Record a finished unit (written whole, then renamed)."""
        write_text(self._path(seed, method), json.dumps(_plain(unit), allow_nan=True) + "\n")

    def remove(self) -> None:
        """The benchmark is written: the journal goes."""
        shutil.rmtree(self.folder, ignore_errors=True)


def journaled(journal: BenchmarkJournal | None, seed: int, method: str, compute: Callable[[], dict[str, Any]],
              loaded: Callable[[], None] | None = None) -> dict[str, Any]:
    """The unit of ``method`` on ``seed``: the journal's if it holds it (``loaded`` is told), else what
    ``compute()`` returns, recorded in the journal."""
    unit = journal.load(seed, method) if journal is not None else None
    if unit is not None:
        log.info("seed %d, %s: loaded from %s", seed, method, journal.folder)  # type: ignore[union-attr]
        if loaded is not None:
            loaded()
        return unit
    unit = compute()
    if journal is not None:
        journal.save(seed, method, unit)
    return unit


def number(value: Any) -> float:
    """A journal's value back as a float (a JSON null, should one appear, is NaN)."""
    return float("nan") if value is None else float(value)


def _plain(value: Any) -> Any:
    """JSON values with NaN and inf kept (:func:`json.dumps` writes them as NaN / Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return jsonable(value)  # dataclasses, paths and the like, as results.json writes them
