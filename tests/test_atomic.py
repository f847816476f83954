"""Atomic writes: the result replaces the target whole, gets the usual permissions, leaves no temp file."""

import os
import stat

import pytest

from metarec._atomic import atomic_path, write_json


def test_written_file_has_umask_permissions_not_private(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
