"""Find models: shipped ones by name (fastlm/weights/<name>/), or checkpoint/run directories."""

from __future__ import annotations

import os
from pathlib import Path

from fastlm.checkpoint_files import CheckpointError
from fastlm.validation import ArgumentTypeError, ArgumentValueError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def available_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "manifest.json").is_file())


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A shipped name, a checkpoint directory, or a run directory (its `latest` checkpoint)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"model must be a name or a path, got {type(name_or_path).__name__}", "model"
        )
    text = os.fspath(name_or_path)
    if text in available_models():
        return WEIGHTS_DIR / text
    path = Path(text)
    if path.is_dir():
        if (path / "latest").is_file():
            return read_latest(path)
        return path
    raise ArgumentValueError(
        f"unknown model {text!r}: not a shipped model (available: {available_models() or 'none'}) "
        "and not a checkpoint directory"
    )


def read_latest(run_dir: Path) -> Path:
    """The checkpoint named by RUN/latest, which must be a directory inside RUN.

    `latest` is data, not a path to follow anywhere: "../other" or "/abs" could make a run
    directory load (or resume from) a model that is not part of it.
    """

    pointer = run_dir / "latest"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer} cannot be read: {err}") from None
    target = (run_dir / name).resolve()
    root = run_dir.resolve()
    if not name or Path(name).is_absolute() or root not in target.parents:
        raise CheckpointError(f"{pointer} must name a checkpoint inside {run_dir}, got {name!r}")
    if not target.is_dir():
        raise CheckpointError(f"{pointer} names {name!r}, which does not exist")
    return run_dir / name
