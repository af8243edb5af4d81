"""Atomic file and directory writes, sha256 helpers, and bounded reads of untrusted files.

Every checkpoint, export and index fastlm writes goes through here: write to a temporary name in
the same directory, fsync, then rename. A crash or SIGKILL leaves either the old file or the new
one, never half of one. Files read back from disk may be anything (a FIFO, a link to /dev/zero,
a huge or deeply nested JSON): `open_regular` / `read_regular` / `parse_json` refuse those with an
`UnreadableFileError` naming the file instead of blocking, exhausting memory or recursing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class UnreadableFileError(ValueError):
    """A file is not a regular file, is larger than its cap, or does not parse."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new entries in directory `path` durable (a no-op where not allowed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file already written and closed (by another library) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and then move tmp_path onto `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_dir(path: str | os.PathLike, fill: Callable[[Path], None], force: bool = False):
    """Build a directory with `fill(tmp_dir)` and rename it to `path` when complete.

    With force=True an existing `path` is replaced (the old one is removed only after the new one
    is complete); without it an existing `path` is an error.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (pass force=True / --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(path: str | os.PathLike, st: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise UnreadableFileError(f"{path} is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnreadableFileError(
            f"{path} is {st.st_size:,} bytes, over the {max_bytes:,}-byte cap for this file"
        )


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[BinaryIO, int]:
    """(binary file, size in bytes) of `path`, only when it is a regular file of <= max_bytes.

    FIFOs, devices, sockets and directories are refused before they are opened (opening a FIFO
    blocks until a writer comes; /dev/zero never ends). The type is checked again on the open
    descriptor, opened with O_NONBLOCK so that a FIFO swapped in meanwhile cannot block either.
    FileNotFoundError passes through.
    """
    _check_regular(path, os.stat(path), max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        _check_regular(path, st, max_bytes)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of regular file `path`, refused (UnreadableFileError) beyond `max_bytes`."""
    f, _ = open_regular(path, max_bytes)
    with f:
        data = f.read(max_bytes + 1)  # + 1: a file that grew past the cap since its stat
    if len(data) > max_bytes:
        raise UnreadableFileError(f"{path} grew over the {max_bytes:,}-byte cap while read")
    return data


def parse_json(data: bytes, path: str | os.PathLike) -> object:
    """JSON `data` read from `path`; any defect (bad UTF-8 or JSON, nesting too deep to parse)
    is an UnreadableFileError naming `path`."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError: ValueError
        raise UnreadableFileError(f"{path} is corrupt: {err}") from None
