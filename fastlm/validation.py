"""One place that checks numeric arguments, for the API, the runtime and the command line.

Rules, the same everywhere:
- an int argument takes an `int` (or numpy integer), never a `bool` (`True` is not a size) and
  never a float (a truncated 2.7 would silently change what runs): wrong type -> `TypeError`;
- a float argument takes an int or float that is finite (NaN/inf -> `ValueError`);
- a value of the right type outside its range -> `ValueError` naming the argument and the range.

Pure Python (no torch, no numpy import needed), so `fastlm.runtime` can use it without PyTorch.
"""

from __future__ import annotations

import math
import numbers
import re

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _is_int(value: object) -> bool:
    # numbers.Integral covers int and numpy integers; bool is an Integral too, so exclude it
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: object, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """`value` as an int in [min, max]; TypeError for a non-int (bools included)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be {_range_text(min, max)}, got {value}")
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
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    low_bad = min is not None and (value <= min if min_open else value < min)
    high_bad = max is not None and (value >= max if max_open else value > max)
    if low_bad or high_bad:
        raise ValueError(f"{name} must be {_range_text(min, max, min_open, max_open)}, got {value}")
    return value


def check_seed(value: object, name: str = "seed") -> int | None:
    """A random seed: None or a non-negative int (a float seed is refused, not truncated)."""
    return check_optional_int(value, name, min=0, max=2**63 - 1)


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
    "check_float",
    "check_manifest_files",
    "check_int",
    "check_optional_int",
    "check_positive_int",
    "check_seed",
]
