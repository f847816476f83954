"""Explicit, verified download of the official GroupLens archives into a local cache.

Nothing in metarec downloads implicitly: :func:`metarec.data.load_dataset` only looks in a folder,
``$METAREC_DATA_DIR`` or this cache, and :func:`fetch_dataset` is the one call that goes online.
Each archive is checked twice: pooch verifies the zip against a pinned sha256 (plus the md5 that
GroupLens-based loaders publish), then the key extracted files are checked against pinned sha256
values, so a silently changed upstream file is caught even when the zip was re-packed.

Pinned values and where they come from:

* ``ml-100k.zip``: sha256 ``50d2a982…a3229`` as pinned by ISG-Siegen/OmniRec
  (``src/omnirec/data_loaders/movielens_100k.py``) and several other public loaders; md5
  ``0e33842e24a9c977be4e0107933c0723`` is GroupLens' published value (also in
  eli-osherovich/papers_with_code ``datasets/movielens/dl_config.py``). Files ``u.data``, ``u.user``,
  ``u.item``: sha256 from the shared-data manifest, which matches per-file values pinned by many
  public loaders.
* ``ml-1m.zip``: sha256 ``a6898adb…54e20`` as pinned by tensorflow/examples
  (``lite/examples/recommendation/ml/data/example_generation_movielens.py``, passed to
  ``tf.keras.utils.get_file``) and secretflow's ML-1M loader; md5 ``c4d9eecf…0906`` from
  sisinflab/DataRec (``datarec/datasets/movielens/movielens1m.py``) and papers_with_code.
  Files: the *original* ``ratings.dat`` (24,594,131 B, sha256 ``506d64ca…a4e0f``, pinned by several
  public projects; the shared-data copy is a rebuilt ``ratings.dat.gz`` and hashes differently),
  ``users.dat`` and ``movies.dat`` from the shared-data manifest.
* ``hetrec2011-lastfm-2k.zip``: sha256 ``6738f481…e913c59c`` as pinned by ISG-Siegen/OmniRec
  (``src/omnirec/data_loaders/hetrec_lastfm.py``); md5 ``296d61af…0ce2`` from sisinflab/DataRec
  (``datarec/datasets/lastfm/lastfm_2011.py``). Files ``artists.dat`` and ``user_artists.dat``
  from the shared-data manifest (each matched by independent copies); ``tags.dat`` /
  ``user_taggedartists.dat`` are covered by the zip hash only, because the public copies differ
  in line endings and the original bytes could not be confirmed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import unquote, urlparse

from metarec._io import recover_dir, replace_dir, write_json
from metarec.errors import ConfigError, DataError

ENV_CACHE = "METAREC_CACHE_DIR"
STAMP = ".metarec-fetch.json"
DownloadProgress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class Archive:
    """One downloadable dataset: where it is, what it must hash to, and which folder it becomes."""

    name: str
    url: str
    sha256: str  # of the zip, checked by pooch before anything is extracted
    folder: str  # folder under the cache; the same name the registry looks for
    files: Mapping[str, str] = field(default_factory=dict)  # extracted file -> sha256
    md5: str | None = None  # of the zip, a second published value


ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        "ml-100k", "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        folder="ml-100k",
        files={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        },
    ),
    "ml-1m": Archive(
        "ml-1m", "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m",
        files={
            "ratings.dat": "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
        },
    ),
    "lastfm": Archive(
        "lastfm", "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        sha256="6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
        md5="296d61afe4e8632b173fc2dd3be20ce2",
        folder="hetrec2011-lastfm-2k",
        files={
            "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
            "user_artists.dat": "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
        },
    ),
}


def cache_dir() -> Path:
    """``$METAREC_CACHE_DIR`` if set, else the OS cache folder for metarec (``pooch.os_cache``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    import pooch

    return Path(pooch.os_cache("metarec"))


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_dataset(name: str, *, cache: str | Path | None = None, progress: DownloadProgress | None = None) -> Path:
    """Download, verify and unpack ``name`` (``ml-100k``, ``ml-1m``, ``lastfm``); return its folder.

    ``progress(done_bytes, total_bytes)`` is called as the zip arrives (total None when the server does not
    say), so a caller can draw a bar: the library itself never prints.

    The folder is ``<cache>/<folder>`` (``cache`` defaults to :func:`cache_dir`), which is where
    :func:`~metarec.data.loaders.registry.resolve_folder` looks. An already fetched and verified
    folder is returned without network access. On any checksum failure a :class:`DataError` is
    raised and nothing is left in the cache: the zip is streamed to a temporary file that pooch
    deletes on mismatch, and files are unpacked into a temporary folder renamed into place only
    after every check passed.
    """
    archive = ARCHIVES.get(name)
    if archive is None:
        if name == "ml-1m-imdb":
            raise ConfigError(
                "ml-1m-imdb has no official download: fetch 'ml-1m', then put MeLU's 'ml-1m-melu-extra/' "
                "folder (hoyeoplee/MeLU, movielens/ml-1m/) next to the cached 'ml-1m/' folder"
            )
        raise ConfigError(f"no download known for {name!r}; fetchable: {', '.join(sorted(ARCHIVES))}")
    root = Path(cache) if cache is not None else cache_dir()
    target = root / archive.folder
    if _already_fetched(target, archive):
        return target
    root.mkdir(parents=True, exist_ok=True)
    zip_path = _download(archive, root / ".downloads", progress)
    try:
        return _unpack(archive, zip_path, root, target)
    finally:
        zip_path.unlink(missing_ok=True)
        _remove_if_empty(root / ".downloads")


def _already_fetched(target: Path, archive: Archive) -> bool:
    """A stamp from an earlier verified fetch, or files that verify now (then stamp them)."""
    stamp = recover_dir(target) / STAMP
    if stamp.exists():
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("sha256") == archive.sha256 and all((target / f).exists() for f in archive.files):
            return True
    if archive.files and all((target / f).exists() for f in archive.files):
        if all(sha256_of(target / f) == want for f, want in archive.files.items()):
            _write_stamp(target, archive)
            return True
    return False


def _download(archive: Archive, downloads: Path, progress: DownloadProgress | None) -> Path:
    import pooch

    fname = Path(urlparse(archive.url).path).name or f"{archive.name}.zip"
    bar = _ProgressAdapter(progress) if progress is not None else False
    if urlparse(archive.url).scheme == "file":
        def downloader(url: str, output_file: str, pooch_obj: object, check_only: bool = False) -> bool | None:
            return _file_downloader(url, output_file, pooch_obj, check_only, progress=bar or None)
    else:
        downloader = pooch.HTTPDownloader(progressbar=bar)
    try:
        path = Path(pooch.retrieve(archive.url, known_hash=f"sha256:{archive.sha256}", fname=fname,
                                   path=downloads, downloader=downloader))
    except ValueError as exc:  # pooch's hash mismatch; the partial file is already gone
        _remove_if_empty(downloads)
        raise DataError(f"download failed its sha256 check, nothing was kept: {exc}", path=archive.url) from None
    except Exception as exc:  # network errors of every flavour
        _remove_if_empty(downloads)
        raise DataError(
            f"download failed ({type(exc).__name__}: {exc}). Without network access, pass a folder holding "
            f"'{archive.folder}/' (data_dir=... / --data-dir) or set METAREC_DATA_DIR", path=archive.url,
        ) from None
    if archive.md5 is not None:
        got = hashlib.md5(path.read_bytes()).hexdigest()
        if got != archive.md5:
            path.unlink(missing_ok=True)
            _remove_if_empty(downloads)
            raise DataError(f"md5 {got} does not match the published {archive.md5}; nothing was kept",
                            path=archive.url)
    return path


def _unpack(archive: Archive, zip_path: Path, root: Path, target: Path) -> Path:
    """Extract into a temporary sibling, verify the files, then rename the folder into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.folder}.", dir=root))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for member in zf.namelist():
                    parts = Path(member).parts
                    if Path(member).is_absolute() or ".." in parts:
                        raise DataError(f"unsafe path {member!r} in the archive", path=zip_path.name)
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise DataError(f"not a valid zip archive: {exc}", path=zip_path.name) from None
        found = _find_folder(tmp, archive)
        for relative, want in archive.files.items():
            got = sha256_of(found / relative)
            if got != want:
                raise DataError(f"extracted file has sha256 {got}, expected the pinned {want}; nothing was kept",
                                path=f"{archive.name}:{relative}")
        _write_stamp(found, archive)
        return replace_dir(found, target)  # over an incomplete or unverifiable earlier copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _find_folder(tmp: Path, archive: Archive) -> Path:
    """ml-100k / ml-1m unpack into a folder of their own; the Last.fm zip unpacks flat."""
    candidates = [tmp / archive.folder, tmp, *sorted(p for p in tmp.iterdir() if p.is_dir())]
    for candidate in candidates:
        if all((candidate / f).exists() for f in archive.files):
            if candidate == tmp:  # flat archive: move its content into a folder of the right name
                inner = tmp / archive.folder
                inner.mkdir()
                for child in list(tmp.iterdir()):
                    if child != inner:
                        os.replace(child, inner / child.name)
                return inner
            return candidate
    raise DataError(f"archive does not contain {', '.join(archive.files)}", path=archive.url)


def _write_stamp(folder: Path, archive: Archive) -> None:
    write_json(folder / STAMP, {"name": archive.name, "url": archive.url, "sha256": archive.sha256,
                                "files": dict(archive.files)})


def _file_downloader(url: str, output_file: str, pooch_obj: object, check_only: bool = False, *,
                     progress: "_ProgressAdapter | None" = None) -> bool | None:
    """pooch downloader for ``file://`` URLs (local mirrors, tests); pooch itself has none."""
    source = Path(unquote(urlparse(url).path))
    if check_only:
        return source.exists()
    if not source.exists():
        raise FileNotFoundError(f"no such file: {source}")
    if progress is not None:
        progress.total = source.stat().st_size
    with open(source, "rb") as src, open(output_file, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            if progress is not None:
                progress.update(len(block))
    if progress is not None:
        progress.close()
    return None


class _ProgressAdapter:
    """The tqdm-like object pooch's downloaders drive (``total``, ``update``, ``reset``, ``close``), turned
    into ``progress(done_bytes, total_bytes)`` calls: pooch's own bar would print from the library."""

    def __init__(self, progress: DownloadProgress) -> None:
        self.progress = progress
        self.total: int | None = None
        self.n = 0

    def update(self, n: int) -> None:
        self.n += int(n)
        total = self.total or None  # pooch sets 0 when the server sends no length
        self.progress(self.n if total is None else min(self.n, total), total)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        """Nothing to release: the caller's bar is the caller's."""


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
