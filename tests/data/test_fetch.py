"""fetch_dataset without internet: zips built in tmp_path and served through file:// URLs."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pooch
import pytest

from metarec.data import fetch, load_dataset
from metarec.data.fetch import ARCHIVES, cache_dir, fetch_dataset, sha256_of
from metarec.errors import ConfigError, DataError

ML100K_FILES = ("u.data", "u.user", "u.item")


def build_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def serve(monkeypatch: pytest.MonkeyPatch, name: str, zip_path: Path, **changes: object) -> fetch.Archive:
    """Point the archive table entry ``name`` at a local zip; hashes default to the zip's own."""
    data = zip_path.read_bytes()
    fields = {"url": zip_path.resolve().as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
              "md5": hashlib.md5(data).hexdigest(), **changes}
    archive = dataclasses.replace(ARCHIVES[name], **fields)
    monkeypatch.setitem(ARCHIVES, name, archive)
    return archive


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def ml100k_zip(data_dir: Path, tmp_path: Path) -> Path:
    """An archive laid out like GroupLens' ml-100k.zip (files in an ``ml-100k/`` folder)."""
    members = {f"ml-100k/{name}": (data_dir / "ml-100k" / name).read_bytes() for name in ML100K_FILES}
    members["ml-100k/README"] = b"readme"
    return build_zip(tmp_path / "ml-100k.zip", members)


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("METAREC_CACHE_DIR")
    assert cache_dir() == Path(pooch.os_cache("metarec"))


def _is_hex(digest: str | None, length: int) -> bool:
    """A lower-case hex digest of ``length`` digits (what hashlib's hexdigest gives)."""
    return digest is not None and len(digest) == length and set(digest) <= set("0123456789abcdef")


def test_pinned_values_are_well_formed() -> None:
    assert set(ARCHIVES) == {"ml-100k", "ml-1m", "lastfm"}
    for archive in ARCHIVES.values():
        assert archive.url.startswith("https://files.grouplens.org/datasets/")
        assert _is_hex(archive.sha256, 64) and _is_hex(archive.md5, 32)
        assert archive.files and all(_is_hex(h, 64) for h in archive.files.values())
    assert ARCHIVES["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert ARCHIVES["ml-100k"].files["u.data"] == "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


@pytest.mark.realdata
def test_pinned_file_hashes_match_shared_data(data_dir: Path) -> None:
    """Every pinned per-file value that the shared copy can confirm (ML-1M ratings.dat is a rebuild)."""
    for name, archive in ARCHIVES.items():
        for relative, want in archive.files.items():
            local = data_dir / archive.folder / relative
            if name == "ml-1m" and relative == "ratings.dat":
                assert not local.exists()  # only ratings.dat.gz, which hashes differently by design
                continue
            assert sha256_of(local) == want, f"{name}: {relative}"


@pytest.mark.realdata
def test_fetch_from_local_mirror_then_load(ml100k_zip: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, "ml-100k", ml100k_zip)
    cache = tmp_path / "cache"
    folder = fetch_dataset("ml-100k", cache=cache)
    assert folder == cache / "ml-100k"
    assert files_under(cache) == ["ml-100k/.metarec-fetch.json", "ml-100k/README", "ml-100k/u.data",
                                  "ml-100k/u.item", "ml-100k/u.user"]  # zip removed, no temp folders
    stats = load_dataset("ml-100k", data_dir=cache).describe()
    assert (stats["users"], stats["items"], stats["ratings"]) == (943, 1682, 100000)
    # the cache is where load_dataset looks when nothing else is configured
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)
    monkeypatch.setenv("METAREC_CACHE_DIR", str(cache))
    assert load_dataset("ml-100k").n_ratings == 100000

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("a verified cache must not be downloaded again")

    monkeypatch.setattr(pooch, "retrieve", offline)
    assert fetch_dataset("ml-100k") == folder


@pytest.mark.realdata
def test_zip_hash_mismatch_leaves_nothing(ml100k_zip: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, "ml-100k", ml100k_zip, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        fetch_dataset("ml-100k", cache=cache)
    assert str(info.value).startswith(f"{ml100k_zip.resolve().as_uri()}: download failed its sha256 check")
    assert files_under(cache) == []
    assert not (cache / "ml-100k").exists() and not (cache / ".downloads").exists()


@pytest.mark.realdata
def test_md5_mismatch_leaves_nothing(ml100k_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, "ml-100k", ml100k_zip, md5="f" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match the published f{32}"):
        fetch_dataset("ml-100k", cache=cache)
    assert files_under(cache) == []


@pytest.mark.realdata
def test_extracted_file_mismatch_leaves_nothing(data_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip whose own hash is right but whose u.user differs from the pinned file hash."""
    members = {f"ml-100k/{name}": (data_dir / "ml-100k" / name).read_bytes() for name in ML100K_FILES}
    members["ml-100k/u.user"] = members["ml-100k/u.user"].replace(b"technician", b"technicien", 1)
    serve(monkeypatch, "ml-100k", build_zip(tmp_path / "ml-100k.zip", members))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        fetch_dataset("ml-100k", cache=cache)
    assert str(info.value).startswith("ml-100k:u.user: extracted file has sha256 ")
    assert "expected the pinned f120e114" in str(info.value)
    assert files_under(cache) == [] and [p.name for p in cache.iterdir()] == []


def test_flat_archive_gets_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Last.fm zip has no top folder; its files still land in hetrec2011-lastfm-2k/."""
    members = {
        "user_artists.dat": b"userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t10\n",
        "artists.dat": b"id\tname\turl\tpictureURL\n51\tDuran Duran\tu\tp\n52\tMorcheeba\tu\tp\n",
        "tags.dat": b"tagID\ttagValue\n1\tpop\n2\tnew wave\n",
        "user_taggedartists.dat": b"userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t1\t1\t4\t2009\n"
                                  b"3\t51\t2\t1\t4\t2009\n2\t52\t1\t1\t4\t2009\n",
    }
    files = {name: hashlib.sha256(members[name]).hexdigest() for name in ("artists.dat", "user_artists.dat")}
    serve(monkeypatch, "lastfm", build_zip(tmp_path / "lastfm.zip", members), files=files)
    cache = tmp_path / "cache"
    folder = fetch_dataset("lastfm", cache=cache)
    assert folder == cache / "hetrec2011-lastfm-2k" and (folder / "tags.dat").exists()
    data = load_dataset("lastfm", data_dir=cache)
    assert data.n_ratings == 3 and data.items.loc["51", "tags"] == ("new wave", "pop")


def test_unsafe_archive_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, "lastfm", build_zip(tmp_path / "evil.zip", {"../escape.dat": b"x"}), files={"a": "0" * 64})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"unsafe path '\.\./escape\.dat'"):
        fetch_dataset("lastfm", cache=cache)
    assert files_under(cache) == [] and not (tmp_path / "escape.dat").exists()


def test_network_failure_says_what_else_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    class Unreachable:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, *args: object, **kwargs: object) -> None:
            raise requests.exceptions.ConnectionError("no route to host")

    monkeypatch.setattr(pooch, "HTTPDownloader", Unreachable)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        fetch_dataset("ml-1m", cache=cache)
    text = str(info.value)
    assert text.startswith("https://files.grouplens.org/datasets/movielens/ml-1m.zip: download failed")
    assert "no route to host" in text and "METAREC_DATA_DIR" in text and "data_dir=" in text
    assert files_under(cache) == []


def test_unknown_names() -> None:
    with pytest.raises(ConfigError, match="no download known for 'ml-20m'; fetchable: lastfm, ml-100k, ml-1m"):
        fetch_dataset("ml-20m")
    with pytest.raises(ConfigError, match="ml-1m-imdb has no official download"):
        fetch_dataset("ml-1m-imdb")


@pytest.mark.realdata
def test_fetch_reports_download_progress_without_printing(ml100k_zip: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """The library calls progress(done_bytes, total_bytes) and prints nothing: the command line draws the bar."""
    serve(monkeypatch, "ml-100k", ml100k_zip)
    calls: list[tuple[int, int | None]] = []
    fetch_dataset("ml-100k", cache=tmp_path / "cache", progress=lambda done, total: calls.append((done, total)))
    size = ml100k_zip.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
