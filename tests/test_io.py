"""Atomic writes (files and folders) and the one JSON conversion."""

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec._io import atomic_dir, atomic_path, backup_path, jsonable, recover_dir, replace_dir, write_json


def test_written_file_has_umask_permissions_not_private(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_interrupted_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_writes_null_for_nan_never_the_non_json_token(tmp_path):
    write_json(tmp_path / "r.json", {"mae": float("nan"), "best": np.float32(0.5), "inf": -math.inf})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"best": 0.5, "inf": None, "mae": None}


def _folder(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)


def _contents(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_atomic_dir_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "model"
    _folder(target, {"a.txt": "old a", "stale.txt": "only in the old"})
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("new b")
    assert _contents(target) == {"a.txt": "new a", "sub/b.txt": "new b"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary, no backup


def test_atomic_dir_keeps_the_old_folder_when_the_new_one_fails_half_way(tmp_path):
    target = tmp_path / "model"
    _folder(target, {"a.txt": "old a"})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new a")
            raise RuntimeError("disk full")
    assert _contents(target) == {"a.txt": "old a"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    _folder(target, {"a.txt": "old a"})
    new = tmp_path / "new"
    _folder(new, {"a.txt": "new a"})
    real_rename = Path.rename

    def rename(self, dest):
        if self == new:
            raise OSError("rename refused")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        replace_dir(new, target)
    assert _contents(target) == {"a.txt": "old a"}
    assert not backup_path(target).exists()


def test_a_lone_backup_is_recovered_and_a_stale_one_deleted(tmp_path):
    target = tmp_path / "model"
    _folder(backup_path(target), {"a.txt": "old a"})  # a crash between the two renames
    assert _contents(recover_dir(target)) == {"a.txt": "old a"}
    assert not backup_path(target).exists()
    _folder(backup_path(target), {"a.txt": "older"})  # a crash after the new folder moved in
    recover_dir(target)
    assert _contents(target) == {"a.txt": "old a"} and not backup_path(target).exists()


def test_a_writer_recovers_a_lone_backup_before_replacing(tmp_path):
    target = tmp_path / "model"
    _folder(backup_path(target), {"a.txt": "old a"})
    with pytest.raises(RuntimeError):
        with atomic_dir(target):
            raise RuntimeError("failed")
    assert _contents(target) == {"a.txt": "old a"}


@dataclass(frozen=True)
class _Inner:
    scale: tuple = (1.0, 5.0)
    path: Path = Path("/tmp/x")


@dataclass(frozen=True)
class _Outer:
    name: str = "m"
    inner: _Inner = field(default_factory=_Inner)
    values: tuple = (np.int64(3), np.float32(0.25), np.bool_(True))


def test_jsonable_turns_nan_and_inf_into_none():
    assert jsonable(float("nan")) is None
    assert jsonable(np.float64("inf")) is None
    assert jsonable([1.0, math.nan, np.array([np.nan, 2.0])]) == [1.0, None, [None, 2.0]]


def test_jsonable_gives_python_numbers_for_numpy_and_torch_scalars():
    out = jsonable([np.int64(3), np.float32(0.5), np.bool_(False), torch.tensor(2.5), torch.tensor([1, 2])])
    assert out == [3, 0.5, False, 2.5, [1, 2]]
    assert [type(v) for v in out[:4]] == [int, float, bool, float]


def test_jsonable_of_nested_dataclasses_is_plain_json():
    out = jsonable({1: _Outer()})
    assert out == {"1": {"name": "m", "inner": {"scale": [1.0, 5.0], "path": "/tmp/x"}, "values": [3, 0.25, True]}}
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_jsonable_of_pandas_missing_values_is_none_and_of_other_objects_their_text():
    import pandas as pd

    assert jsonable(pd.NA) is None and jsonable(pd.NaT) is None
    assert jsonable(pd.Timestamp("2001-02-03")) == "2001-02-03 00:00:00"


def test_every_file_of_an_atomic_dir_gets_the_umask_permissions(tmp_path):
    """A saved model is readable by a service running as another user (umask 022: 0644 files, 0755
    folders), whatever mode the writer of each file chose (safetensors: 0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        from metarec import _io

        target = tmp_path / "model"
        with _io.atomic_dir(target) as tmp:
            (tmp / "sub").mkdir()
            for name in ("weights.safetensors", "sub/x.json"):
                path = tmp / name
                path.write_text("x")
                os.chmod(path, 0o600)
        modes = {p.relative_to(target).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
        expected = 0o777 & ~_io._UMASK
        assert modes == {".": expected, "sub": expected, "weights.safetensors": expected & 0o666,
                         "sub/x.json": expected & 0o666}
    finally:
        os.umask(old)


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path):
    """SIGKILL skips ``finally``: a temporary folder or file of an interrupted save stays behind until the
    next write of the same path (or a load of the folder) removes it."""
    from metarec import _io

    target = tmp_path / "last"
    with _io.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    (tmp_path / ".last.k1ll3d.tmp").mkdir()
    (tmp_path / ".last.k1ll3d.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".config.toml.x9.tmp").write_text("half")
    (tmp_path / ".lastly.zz.tmp").mkdir()  # another name's: not touched
    _io.recover_dir(target)
    assert not (tmp_path / ".last.k1ll3d.tmp").exists() and (target / "a").read_text() == "1"
    _io.write_text(tmp_path / "config.toml", "x = 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lastly.zz.tmp", "config.toml", "last"]
