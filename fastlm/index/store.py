"""Versioned, crash-safe index directories: what `Index.save` / `Index.load` stand on.

On disk (format fastlm-index/3) an index directory holds complete, never-modified versions and a
pointer that names the current one:

    DIR/manifest.json        {"format": "fastlm-index/3", "current": "v00000007"}
    DIR/v00000007/           the version's files (fastlm/index/core.py lists them) and its
                             manifest.json ({"format", "files": {name: sha256}, facts...})
    DIR/.fastlm-index.lock   flock-ed by a saving process for its whole save

`save_version` writes a new version, fsyncs it, then replaces the pointer atomically (temp file,
fsync, os.replace). `load_current` resolves the pointer once and reads only that version: it
never pairs one save's texts with another's vectors, and after a kill -9 at any point of a save
the pointer still names the last complete version. Each save, holding the lock, then removes
what killed saves left and every version but the new one and the one it replaced (a reader that
resolved the pointer just before may still be reading that one); a reader whose version is
removed all the same (two saves finished during its read) resolves the pointer again.

Every file is read as untrusted: regular files only, JSON size-capped, sha256 checked before
use. fastlm-index/1 (files directly in DIR) and /2 directories still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from fastlm.io import (
    UnreadableFileError,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    open_regular,
    parse_json,
    read_regular,
    sha256_file,
)

try:
    import fcntl
except ImportError:  # no flock (Windows): concurrent saves to one directory are unsupported there
    fcntl = None

INDEX_MANIFEST = "manifest.json"
INDEX_FORMAT, V2_FORMAT, LEGACY_FORMAT = "fastlm-index/3", "fastlm-index/2", "fastlm-index/1"
FORMATS = (INDEX_FORMAT, V2_FORMAT, LEGACY_FORMAT)
LOCK_FILE = ".fastlm-index.lock"
# What a load reads before parsing: a manifest is a few kilobytes (model facts, settings).
MAX_MANIFEST_BYTES = 1 << 20
LOAD_ATTEMPTS = 10  # pointer resolutions before a load gives up on an index saved non-stop
LEGACY = ""  # the "version" of a fastlm-index/1 index: its files lie in DIR itself
LEGACY_FILES = ("index.json", "embeddings.npy")
HASH_CHUNK = 1 << 22  # bytes hashed at a time when a file is streamed rather than read whole
_VERSION = re.compile(r"v\d{8,}")
_POINTER_TMP = re.compile(r"\.manifest\.json\..+\.tmp")  # atomic_write's temporary pointer
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no "/", "\\" or "..": stays in its dir
_SHA256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


class IndexFileError(ValueError):
    """A saved index is missing a file, fails its sha256 check, or cannot be parsed."""


# ------------------------------------------------------------------ writing
def save_version(path: Path, write: Callable[[Path], list[str]], facts: dict) -> None:
    """Write a new version of index directory `path` and point it there (module docstring).

    `write(vdir)` writes the version's files and returns their names; they are fsynced and
    listed with their sha256 in the version's manifest.json, beside `facts`. `path` may be new,
    empty or an index; anything else is refused (FileExistsError), never replaced.
    """
    refuse_foreign(path)
    path.mkdir(parents=True, exist_ok=True)
    with _writer_lock(path):
        previous = current_or_none(path)
        version = _next_version(path)
        (path / version).mkdir()
        try:
            _write_version(path / version, write, facts)
            pointer = {"format": INDEX_FORMAT, "current": version}
            atomic_write_text(path / INDEX_MANIFEST, json.dumps(pointer))
        except BaseException:
            if current_or_none(path) != version:  # never published: nobody reads it
                shutil.rmtree(path / version, ignore_errors=True)
            raise
        _remove_stale(path, keep={version, previous})


def _write_version(vdir: Path, write: Callable[[Path], list[str]], facts: dict) -> None:
    names = write(vdir)
    for name in names:
        fsync_file(vdir / name)
    files = {name: sha256_file(vdir / name) for name in sorted(names)}
    manifest = json.dumps({"format": INDEX_FORMAT, "files": files, **facts}, indent=2)
    with open(vdir / INDEX_MANIFEST, "x", encoding="utf-8") as f:
        f.write(manifest)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(vdir)


def refuse_foreign(path: Path) -> None:
    """FileExistsError unless `path` is new, empty, an index, or what a killed first save left."""
    if not path.exists():
        return
    refuse = f"{path} exists and is not a fastlm index; not replacing it"
    if not path.is_dir():
        raise FileExistsError(f"{refuse} (it is not a directory)")
    names = os.listdir(path)
    if INDEX_MANIFEST not in names:
        if names and (LOCK_FILE not in names or not all(map(_is_internal, names))):
            raise FileExistsError(f"{refuse} (it holds {sorted(names)[0]!r}, no {INDEX_MANIFEST})")
        return
    try:
        file = path / INDEX_MANIFEST
        manifest = parse_json(read_regular(file, MAX_MANIFEST_BYTES), file)
    except (OSError, UnreadableFileError) as err:
        raise FileExistsError(f"{refuse} ({err})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt not in FORMATS:
        raise FileExistsError(f"{refuse} (its {INDEX_MANIFEST} has format {fmt!r})")


def _is_internal(name: str) -> bool:
    return name == LOCK_FILE or bool(_VERSION.fullmatch(name) or _POINTER_TMP.fullmatch(name))


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """One saving process at a time; the kernel drops the lock when its holder dies."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _next_version(path: Path) -> str:
    """A name above every version present, published or left by a killed save."""
    numbers = [int(name[1:]) for name in os.listdir(path) if _VERSION.fullmatch(name)]
    return f"v{max(numbers, default=0) + 1:08d}"


def _remove_stale(path: Path, keep: set[str | None]) -> None:
    """Remove every version not in `keep`, and temporary pointers of killed saves. The caller
    holds the lock: no other process is writing any of them."""
    for name in os.listdir(path):
        if _VERSION.fullmatch(name) and name not in keep:
            shutil.rmtree(path / name, ignore_errors=True)
        elif _POINTER_TMP.fullmatch(name):
            (path / name).unlink(missing_ok=True)
    if LEGACY not in keep:  # the files of a fastlm-index/1 index, two saves ago
        for name in LEGACY_FILES:
            (path / name).unlink(missing_ok=True)


# ------------------------------------------------------------------ reading
def load_current(path: Path, read: Callable[[Path, str], T]) -> T:
    """`read(path, version)` of the version the pointer names, resolved again when two saves
    removed it while it was read (a defect of the still-current version is raised)."""
    if not path.is_dir():
        raise FileNotFoundError(f"index directory not found: {path}")
    for _ in range(LOAD_ATTEMPTS):
        version = current(path)
        try:
            return read(path, version)
        except IndexFileError:
            if current_or_none(path) == version:
                raise  # still the current version: the defect is real
    raise IndexFileError(
        f"{path}: saves replaced the index {LOAD_ATTEMPTS} times while it was read; retry"
    )


def current(path: Path) -> str:
    """The version the pointer names ("" for a fastlm-index/1 index)."""
    file = path / INDEX_MANIFEST
    try:
        pointer = read_json(file, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise IndexFileError(
            f"{path} has no {INDEX_MANIFEST}: not a fastlm index (Index.save writes one)"
        ) from None
    fmt = pointer.get("format") if isinstance(pointer, dict) else None
    if fmt == LEGACY_FORMAT:
        return LEGACY
    if fmt not in (INDEX_FORMAT, V2_FORMAT):
        raise IndexFileError(f"{file} is not a {', '.join(reversed(FORMATS))} manifest")
    version = pointer.get("current")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise IndexFileError(f"{file}: 'current' must name a version like v00000001: {version!r}")
    return version


def current_or_none(path: Path) -> str | None:
    try:
        return current(path)
    except (OSError, ValueError):
        return None


def read_json(file: Path, max_bytes: int, sha256: str | None = None) -> object:
    """Parsed JSON of a regular file of <= max_bytes, after its sha256 check when one is given."""
    try:
        data = read_regular(file, max_bytes)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise IndexFileError(f"sha256 mismatch for {file}: the file is corrupt or was edited")
        return parse_json(data, file)
    except UnreadableFileError as err:
        raise IndexFileError(str(err)) from None


def read_manifest(vdir: Path, version: str, required: tuple[str, ...]) -> dict:
    """A version's manifest (format checked, file names plain, digests hex), which must list
    every name of `required`."""
    file = vdir / INDEX_MANIFEST
    fmt = LEGACY_FORMAT if version == LEGACY else None
    manifest = read_json(file, MAX_MANIFEST_BYTES)
    ok = isinstance(manifest, dict) and manifest.get("format") in ((fmt,) if fmt else FORMATS)
    files = manifest.get("files") if ok else None
    if not isinstance(files, dict):
        raise IndexFileError(f"{file} is not a {fmt or ', '.join(FORMATS)} manifest")
    for name, digest in files.items():
        if not _FILE_NAME.fullmatch(name) or not isinstance(digest, str):
            raise IndexFileError(f"{file}: {name!r} is not a plain file name of this version")
        if not _SHA256.fullmatch(digest):
            raise IndexFileError(f"{file}: the sha256 of {name!r} is not 64 hex digits")
    missing = [name for name in required if name not in files]
    if missing:
        raise IndexFileError(f"{file} does not list {', '.join(missing)}")
    return manifest


def verify_file(file: Path, sha256: str) -> None:
    """IndexFileError unless `file` is a regular file whose sha256 is `sha256` (streamed in
    chunks: memory stays bounded however large the file)."""
    try:
        f, _ = open_regular(file)
    except UnreadableFileError as err:
        raise IndexFileError(str(err)) from None
    except FileNotFoundError:
        raise IndexFileError(f"index file missing: {file}") from None
    digest = hashlib.sha256()
    with f:
        while block := f.read(HASH_CHUNK):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise IndexFileError(f"sha256 mismatch for {file}: the file is corrupt or was edited")
