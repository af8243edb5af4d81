"""A training run's directory: what a new run may start in, which checkpoint --resume
continues from, how a checkpoint step is written (atomic, retention), and the JSONL log.

    tokenizer.json        trained here when no --tokenizer is given
    log.jsonl             one JSON object per log/eval event
    checkpoints/step_N/   complete checkpoints (see fastlm.checkpoint)
    latest                name of the newest complete checkpoint, replaced atomically
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from fastlm.checkpoint import (
    CheckpointError,
    load_trainer_state,
    save_checkpoint,
    verify_checkpoint,
)
from fastlm.hub import read_latest
from fastlm.io import atomic_write_text

RUN_FILES = ("latest", "log.jsonl", "train_config.json", "tokenizer.json", "checkpoints")


def check_new_run_dir(out: Path, resume: bool = False) -> None:
    """A new run starts in a new or empty directory: reusing a run directory would mix its
    tokenizer, checkpoints (deleted by retention) and log with the new run's. With --resume (and
    no checkpoint to continue from), a directory that holds only the files of a run killed
    before its first checkpoint qualifies too: that run starts over (clear_partial_run)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    found = [name for name in RUN_FILES if (out / name).exists()]
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES) if found else []
    never_saved = found and not others and not checkpoint_dirs(out) and "latest" not in found
    if resume and never_saved:
        return
    if resume:
        held = f" and holds files that are not a run's ({', '.join(others[:3])})" if others else ""
        raise CheckpointError(
            f"--resume: no checkpoint in {out} (missing {out / 'latest'}){held}; start a new "
            "run without --resume in a new or empty directory"
        )
    if never_saved:
        raise FileExistsError(
            f"--out {out} holds a run that never wrote a checkpoint ({', '.join(found)}); pass "
            "--resume to start it over from step 0 in place, or choose a new or empty directory"
        )
    if found or (out.is_dir() and any(out.iterdir())):
        what = f"a training run ({', '.join(found)})" if found else "files"
        raise FileExistsError(
            f"--out {out} already holds {what}; pass --resume to continue it, "
            "or choose a new or empty directory"
        )


def clear_partial_run(out: Path, tokenizer: str | None) -> None:
    """Remove what a run killed before its first checkpoint left (its log, config, half-written
    checkpoint directories, the tokenizer it trained), so the run restarts as it began."""
    warnings.warn(
        f"--resume: no checkpoint was written yet in {out}: starting the run from step 0 (its "
        "partial files are replaced)",
        stacklevel=4,
    )
    mine = Path(tokenizer).resolve() if tokenizer else None
    for name in ("log.jsonl", "train_config.json", "tokenizer.json"):
        f = out / name
        if f.is_file() and f.resolve() != mine:  # never the --tokenizer the run is given
            f.unlink()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # no step_N in it: checked before


def find_resume(out: Path, main: bool) -> Path | None:
    """The checkpoint --resume continues from: the one `latest` names, or a newer one that
    verifies (a run killed between writing checkpoints/step_N and moving `latest` to it: `latest`
    is moved on by the main rank). None: no checkpoint at all (see check_new_run_dir)."""
    latest = read_latest(out) if (out / "latest").is_file() else None
    floor = step_number(latest) if latest is not None else -1
    for ckpt in checkpoint_dirs(out):  # newest first
        if step_number(ckpt) <= floor:
            break
        try:
            verify_checkpoint(ckpt)
            load_trainer_state(ckpt)
        except CheckpointError as err:
            if latest is None:  # nothing else to continue from: never delete it silently
                raise CheckpointError(
                    f"--resume: {out} has no `latest` and {ckpt} does not verify ({err}); "
                    "remove it to start the run over with --resume"
                ) from None
            if main:
                warnings.warn(f"--resume: skipped {ckpt}: {err}", stacklevel=4)
            continue
        if main:
            warnings.warn(
                f"--resume: continuing from {ckpt}, newer than `latest` "
                f"({latest.name if latest else 'none'}) and complete",
                stacklevel=4,
            )
            atomic_write_text(out / "latest", f"checkpoints/{ckpt.name}\n")
        return ckpt
    return latest


def checkpoint_dirs(out: Path) -> list[Path]:
    """The run's checkpoints/step_N directories, newest first (not half-written .tmp ones)."""
    found = (out / "checkpoints").glob("step_*") if (out / "checkpoints").is_dir() else []
    return sorted(
        (d for d in found if d.is_dir() and d.name[len("step_") :].isdigit()),
        key=step_number,
        reverse=True,
    )


def step_number(ckpt: Path) -> int:
    digits = ckpt.name[len("step_") :]
    return int(digits) if ckpt.name.startswith("step_") and digits.isdigit() else -1


def save_step(out: Path, model, tok, optimizer, state: dict, keep: int) -> None:
    ckpt_root = out / "checkpoints"
    name = f"step_{state['step']:07d}"
    save_checkpoint(
        ckpt_root / name,
        model,
        tok,
        optimizer,
        state,
        extra_manifest={"seq_len": state["seq_len"]},
        force=True,
    )
    atomic_write_text(out / "latest", f"checkpoints/{name}\n")
    old = sorted(p for p in ckpt_root.glob("step_*") if p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    # half-written directories left by a killed run (one writer per run directory: safe)
    for tmp in ckpt_root.glob(".step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


class RunLog:
    """JSONL log on the main rank. On resume, drops entries newer than the checkpoint step so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path, enabled: bool, truncate_after: int | None):
        self.path, self.enabled = path, enabled
        if enabled and truncate_after is not None and path.is_file():
            keep = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and step_of_line(line) <= truncate_after
            ]
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def step_of_line(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62  # a torn last line from a kill: drop it
