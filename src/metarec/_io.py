"""Writes a reader never sees half of, and the one conversion of Python values to JSON.

Files: written to a temporary sibling, flushed to disk, then renamed over the target. Folders: built
under a temporary name in the same parent, flushed, then swapped in (old -> ``.NAME.bak``, new ->
``NAME``, the backup deleted), so at every instant the old or the new folder exists whole; a crash
between the two renames leaves only the backup, which :func:`recover_dir` (called by every folder
write, and by readers) puts back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); the result gets what a plain open() would give it
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    """``obj`` through :func:`jsonable` (so NaN is written as null, never as the non-JSON ``NaN``)."""
    write_text(target, json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import, then restored
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to disk; folders cannot be opened on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- folders
def backup_path(target: str | Path) -> Path:
    """Where :func:`replace_dir` keeps the old folder while the new one moves in."""
    target = Path(target)
    return target.with_name(f".{target.name}.bak")


def remove_stale_temporaries(target: str | Path, keep: Path | None = None) -> None:
    """Delete what a killed writer of ``target`` left beside it (``.NAME.*.tmp``: a temporary file or
    folder that never got renamed; a ``finally`` does not run after SIGKILL). A path has one writer at a
    time (a run folder one training), so a temporary found before writing is stale."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if keep is not None and stale == keep:
            continue
        log.info("removing %s, left by an interrupted write", stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def recover_dir(target: str | Path, keep: Path | None = None) -> Path:
    """Finish a folder swap a crash interrupted: a lone backup becomes ``target`` again; a backup beside
    a complete ``target`` (the crash came after the new folder moved in) is deleted; temporaries a killed
    writer left are removed."""
    target = Path(target)
    remove_stale_temporaries(target, keep)
    backup = backup_path(target)
    if backup.is_dir():
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            log.warning("%s: an interrupted replace left only its backup; restoring it", target)
            backup.rename(target)
    return target


def replace_dir(new: str | Path, target: str | Path) -> Path:
    """Move the complete folder ``new`` onto ``target`` (same file system): a reader sees the old folder
    or the new one, never neither for longer than two renames, never a half-written one."""
    new, target = Path(new), Path(target)
    recover_dir(target, keep=new)
    for path in (*sorted(new.rglob("*"), reverse=True), new):  # files and sub-folders first
        _fsync(path)
    if not target.exists():
        new.rename(target)
    else:
        backup = backup_path(target)
        target.rename(backup)
        try:
            new.rename(target)
        except OSError:
            backup.rename(target)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    _fsync(target.parent)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target`` whole, on an
    exception it is deleted and ``target`` stays as it was."""
    target = recover_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes the folder private (0700)
        for path in tmp.rglob("*"):  # and writers such as safetensors make their files 0600
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MB blocks (checkpoint digests, the served ``model_version``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- JSON
def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: dataclasses and mappings -> dicts (str keys); tuples, sets, numpy
    arrays and torch tensors -> lists; numpy / torch scalars -> Python numbers; Path -> str; NaN, inf,
    None and pandas' NA / NaT -> None. Anything else becomes its ``str``, so a report never fails on an
    odd value (a timestamp in item metadata)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass as a plain int
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # np.float64 is a float too
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    np = sys.modules.get("numpy")  # looked up, not imported: a value of a library never loaded cannot occur
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return jsonable(value.tolist())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    pd = sys.modules.get("pandas")
    if pd is not None and (value is pd.NA or value is pd.NaT):
        return None
    return str(value)
