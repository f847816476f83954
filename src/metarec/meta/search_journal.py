"""The recipe search's progress on disk, so that a killed ``metarec train`` resumes its search where it stopped.

Why: the automatic recipe trains several candidates one after another (:func:`metarec.meta.recipe.choose_recipe`)
before the chosen one becomes the run. On a large table that is hours, and a run folder holds nothing until
the end. The journal (``RUNDIR/search``) keeps the search's starting configuration, each finished trial's
record (``trials.jsonl``, one line per trial, in the order run) and the trained run of the best trial so
far (``trial-N/``, as :meth:`Trainer.write_run` writes a run). Resumed, the search replays the recorded
trials instead of training them again (each trial is seeded, so the search takes the same path) and trains
only what is left; a trial killed half-way is trained again from its start. The result is the
uninterrupted search's: the same trials, the same choice, the same trained parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from metarec._io import jsonable, write_json, write_text
from metarec.errors import MetarecError
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.model_card import data_sizes
from metarec.meta.run import RunConfig

if TYPE_CHECKING:  # imported at use: the trainer pulls in the engine
    from metarec.meta.trainer import Trainer
    from metarec.tasks.split import ColdStartSplit

TRIALS = "trials.jsonl"


class SearchJournal:
    """``folder`` (``RUNDIR/search``): see the module docstring."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    # ------------------------------------------------------------------ starting and resuming
    def open(self, base: RunConfig, fixed: Sequence[str], split: "ColdStartSplit") -> None:
        """Start a search from ``base`` (not searching ``fixed``) on ``split``, or continue the one recorded
        here if it is that search: the same starting configuration, fixed settings and data sizes (a table
        that changed since would replay scores measured on other data). Otherwise a :class:`MetarecError`
        says what differs."""
        sizes = data_sizes(split)
        if not self.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text(self.folder / "config.toml", base.to_toml())
            write_json(self.folder / "search.json", {"fixed": list(fixed), "data": sizes})
            write_text(self.folder / TRIALS, "")
            return
        saved, saved_fixed = self.settings()
        recorded, then = self._search_json().get("data"), saved.to_dict()
        differ = [k for k, v in base.to_dict().items() if then.get(k) != v]
        if set(saved_fixed) != set(fixed):
            differ.append("fixed settings")
        if recorded != sizes:
            differ.append(f"data (then {recorded}, now {sizes})")
        if differ:
            raise MetarecError(f"{self.folder}: a recipe search of another run is recorded here (it differs in "
                               f"{', '.join(differ)}); remove it, or train into a new folder")

    def exists(self) -> bool:
        """Whether a search was started here (and has not finished)."""
        return (self.folder / "config.toml").is_file() and (self.folder / "search.json").is_file()

    def settings(self) -> tuple[RunConfig, tuple[str, ...]]:
        """The search's starting configuration and its fixed settings, as :meth:`open` wrote them."""
        fixed = self._search_json()["fixed"]
        return RunConfig.from_toml(self.folder / "config.toml"), tuple(str(f) for f in fixed)

    def _search_json(self) -> dict[str, Any]:
        """search.json (fixed settings, data sizes), or an error naming it."""
        path = self.folder / "search.json"
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(found, dict) or "fixed" not in found:
                raise ValueError("no 'fixed' entry")
            return found
        except (OSError, ValueError) as exc:
            raise MetarecError(f"{path}: unreadable ({exc})") from None

    def records(self) -> list[dict[str, Any]]:
        """The finished trials' records, in the order run (a line cut short by a kill is not one)."""
        path = self.folder / TRIALS
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    def replay(self, index: int, settings: dict[str, Any]) -> dict[str, Any] | None:
        """Trial ``index``'s record if it finished (None: train it). Its settings must be the ones the search
        asks for now; otherwise this is not the same search (the data or the package changed)."""
        records = self.records()
        if index >= len(records):
            return None
        record = records[index]
        if record.get("settings") != jsonable(settings):
            raise MetarecError(f"{self.folder}: trial {index} ran with {record.get('settings')}, the search now asks "
                               f"for {jsonable(settings)}; start the run again (--overwrite)")
        return record

    # ------------------------------------------------------------------ recording
    def record(self, index: int, trial: Mapping[str, Any], trainer: "Trainer", best: bool) -> None:
        """Trial ``index`` finished (``trial``: its record, ``RecipeTrial.to_dict``; ``trainer``: its trained
        trainer): when ``best`` (the best so far), its trained run is kept first as
        ``trial-<index>`` (written whole, then renamed), then its record is appended and the previous best's
        run removed. A kill at any point leaves a journal that replays to the same search."""
        if best:
            target = self.folder / f"trial-{index}"
            partial = self.folder / f".trial-{index}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            run_dir = trainer.run_dir
            try:
                trainer.write_run(partial)
            finally:
                trainer.run_dir = run_dir
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        line = json.dumps(jsonable({"index": index, **trial, "best": best}), allow_nan=False)
        with open(self.folder / TRIALS, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
        if best:
            for old in self.folder.glob("trial-*"):
                if old.name != f"trial-{index}":
                    shutil.rmtree(old, ignore_errors=True)

    def trainer(self, index: int, config: RunConfig, split: "ColdStartSplit") -> "Trainer":
        """The trained :class:`Trainer` of recorded best trial ``index``, as it was when it finished: its
        last epoch's state (parameters, Adam moments, running average), epoch records and selected epoch."""
        from metarec.meta.trainer import Trainer, meta_parameters

        run = self.folder / f"trial-{index}"
        if not (run / "last").is_dir():
            raise MetarecError(f"{run}: the best trial's run is missing; start the run again (--overwrite)")
        trainer = Trainer(config, split=split)
        trainer.resume(run / "last")
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        trainer.history = [json.loads(line) for line in lines if line.strip()]
        if (run / "best").is_dir():
            trainer.best_params = meta_parameters(load_checkpoint(run / "best").learner)
        return trainer

    def remove(self) -> None:
        """The search is over and its run written: the journal goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
