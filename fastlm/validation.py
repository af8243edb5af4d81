"""One place that checks arguments, for the API, the runtime, the server and the command line.

Every check here raises `ArgumentError` naming the parameter (`err.param`), in one of two kinds
that are also the built-in errors callers catch: `ArgumentTypeError` (a `TypeError`: wrong
type) and `ArgumentValueError` (a `ValueError`: right type, wrong value). The server maps any
`ArgumentError` to an OpenAI-shaped 400 with `param` set. Rules, the same everywhere:
- an int argument takes an `int` (or numpy integer), never a `bool` (`True` is not a size) and
  never a float (a truncated 2.7 would silently change what runs): wrong type -> type error;
- a float argument takes an int or float that is finite (NaN/inf -> value error);
- a value of the right type outside its range -> value error naming the argument and the range;
- a text is a `str` that encodes as UTF-8; a list of texts is a sequence of them, never one str.

Pure Python (no torch, no numpy import needed), so `fastlm.runtime` can use it without PyTorch.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArgumentError(Exception):
    """A bad argument to a public call; `param` names it (e.g. "top_k", "texts[3]").

    Always raised as one of its two kinds, so `except ArgumentError` catches both while
    `except ValueError` / `except TypeError` keep their usual meaning."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ArgumentValueError(ArgumentError, ValueError):
    """Right type, value out of range or malformed."""


class ArgumentTypeError(ArgumentError, TypeError):
    """Wrong type."""


def _is_int(value: object) -> bool:
    # numbers.Integral covers int and numpy integers; bool is an Integral too, so exclude it
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: object, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """`value` as an int in [min, max]; TypeError for a non-int (bools included)."""
    if not _is_int(value):
        raise ArgumentTypeError(
            f"{name} must be an int, got {type(value).__name__} {value!r}", name
        )
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise ArgumentValueError(f"{name} must be {_range_text(min, max)}, got {value}", name)
    return value


def check_positive_int(value: object, name: str, *, max: int | None = None) -> int:
    """`value` as an int >= 1 (a size, a count, a number of steps)."""
    return check_int(value, name, min=1, max=max)


def check_optional_int(
    value: object, name: str, *, min: int | None = None, max: int | None = None
) -> int | None:
    return None if value is None else check_int(value, name, min=min, max=max)


def check_float(
    value: object,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """`value` as a finite float in its range; `min_open` / `max_open` exclude the bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{name} must be a number, got {type(value).__name__} {value!r}", name
        )
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name} must be a finite number, got {value}", name)
    low_bad = min is not None and (value <= min if min_open else value < min)
    high_bad = max is not None and (value >= max if max_open else value > max)
    if low_bad or high_bad:
        range_text = _range_text(min, max, min_open, max_open)
        raise ArgumentValueError(f"{name} must be {range_text}, got {value}", name)
    return value


def check_seed(value: object, name: str = "seed") -> int | None:
    """A random seed: None or a non-negative int (a float seed is refused, not truncated)."""
    return check_optional_int(value, name, min=0, max=2**63 - 1)


def check_text(text: object, name: str = "text") -> str:
    """`text` as a str that encodes as UTF-8 (a lone surrogate cannot be tokenised)."""
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{name} must be str, got {type(text).__name__}", name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ArgumentValueError(
            f"{name} cannot be encoded as UTF-8 (lone surrogate at index {err.start}); "
            "clean it first, e.g. s.encode('utf-8', 'replace').decode()",
            name,
        ) from None
    return text


def check_texts(texts: object, name: str = "texts") -> list[str]:
    """`texts` as a list of checked texts; one bare str is refused (it is not a list of texts,
    and iterating it would embed its characters)."""
    if isinstance(texts, str):
        raise ArgumentTypeError("expected a list of str, got a single str; wrap it in a list", name)
    if not isinstance(texts, Sequence):
        raise ArgumentTypeError(f"expected a list of str, got {type(texts).__name__}", name)
    return [check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]


def check_manifest_files(
    manifest: object, where: str, error: type[Exception] = ValueError, reserved: str = ""
) -> dict[str, str]:
    """A manifest's `files` {plain file name: sha256 hex}, checked without touching any file.

    Names must be plain file names (no "/", "\\", NUL, "." or ".."): a manifest is data, and a
    path in it would make the loader read, and its errors reveal, files outside the directory.
    `reserved` (the manifest's own name) may not be listed. Raises `error` with `where` in it.
    """
    if not isinstance(manifest, dict):
        raise error(f"{where} must hold a JSON object, got {type(manifest).__name__}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise error(f"{where}: 'files' must be a non-empty object of name -> sha256")
    for name, digest in files.items():
        plain = name not in ("", ".", "..", reserved) and not any(c in name for c in "/\\\0")
        if not plain:
            raise error(f"{where}: file name {name!r} is not a plain file name")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise error(f"{where}: sha256 of {name!r} is not 64 hex digits")
    return files


def _range_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "check_float",
    "check_manifest_files",
    "check_int",
    "check_optional_int",
    "check_positive_int",
    "check_seed",
    "check_text",
    "check_texts",
]


# what `embed(kind=...)` takes: documents (the default) and the queries that search them
EMBED_KINDS = ("document", "query")


def check_kind(kind: object) -> str:
    """An embedding kind (EMBED_KINDS)."""
    if not isinstance(kind, str):
        raise ArgumentTypeError(f"kind must be a str, got {type(kind).__name__}", "kind")
    if kind not in EMBED_KINDS:
        raise ArgumentValueError(f"kind must be one of {EMBED_KINDS}, got {kind!r}", "kind")
    return kind
