"""Training and evaluation refuse what would lose data or give a silently wrong result:
an existing run without --resume, sizes that are bools or out of range, a negative clip, zero
steps, a window that scores nothing. Invalid UTF-8 in the data is replaced and warned.

The command-line cases run the real console entry point (`python -m fastlm.cli`) in a
subprocess and check the exit code and that stderr is one line.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fastlm.checkpoint import load_checkpoint
from fastlm.sampling import sample_next
from fastlm.training import evaluate_file, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(train_setup):
    """conftest's train_setup, whose `config(out, **overrides)` defaults to even smaller runs
    here: 2 steps of 2 x 8 tokens."""
    config = functools.partial(train_setup.config, batch_size=2, seq_len=8, steps=2, warmup_steps=1)
    return SimpleNamespace(**{**vars(train_setup), "config": config})


@pytest.fixture(scope="module")
def finished_run(setup, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bad-train") / "run"
    train(setup.config(run))
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------- finding: data loss
def test_train_into_an_existing_run_without_resume_is_refused(setup, finished_run, tmp_path):
    before = _snapshot(finished_run)
    other = tmp_path / "other.txt"
    other.write_text("completely different data " * 400, encoding="utf-8")
    for overrides in ({}, {"data": [str(other)], "tokenizer": None}):
        with pytest.raises(FileExistsError, match="pass --resume to continue it"):
            train(setup.config(finished_run, steps=4, **overrides))
    assert _snapshot(finished_run) == before  # nothing deleted, overwritten or appended


def test_train_into_a_non_empty_directory_is_refused(setup, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already holds files"):
        train(setup.config(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        train(setup.config(blocker))


def test_train_into_an_empty_directory_works(setup, tmp_path):
    final = train(setup.config(tmp_path, steps=1))
    assert final == tmp_path / "checkpoints" / "step_0000001" and final.is_dir()


# ---------------------------------------------------------------------- finding: wrong metrics
BAD_CONFIG = [
    ({"grad_clip": -1.0}, ValueError, "grad_clip must be > 0.0"),
    ({"grad_clip": 0.0}, ValueError, "grad_clip must be > 0.0"),
    ({"grad_clip": float("nan")}, ValueError, "grad_clip must be a finite number"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"steps": -3}, ValueError, "steps must be >= 1"),
    ({"steps": None, "tokens": 0}, ValueError, "tokens must be >= 1"),
    ({"steps": True}, TypeError, "steps must be an int"),
    ({"batch_size": True}, TypeError, "batch_size must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"seq_len": 16.0}, TypeError, "seq_len must be an int"),
    ({"seq_len": 6000, "model": "transformer"}, ValueError, "position table"),
    ({"seed": 1.7}, TypeError, "seed must be an int"),
    ({"seed": -1}, ValueError, "seed must be in"),
    ({"lr": 0.0}, ValueError, "lr must be > 0.0"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite number"),
    ({"lr": "1e-3"}, TypeError, "lr must be a number"),
    ({"min_lr_ratio": 1.5}, ValueError, "min_lr_ratio must be in [0.0, 1.0]"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0.0"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps must be >= 0"),
    ({"dropout": 1.0}, ValueError, "dropout must be in [0.0, 1.0)"),
    ({"eval_tokens": 0}, ValueError, "eval_tokens must be >= 1"),
    ({"keep_checkpoints": 0}, ValueError, "keep_checkpoints must be >= 1"),
    ({"threads": 0}, ValueError, "threads must be >= 1"),
    ({"vocab_size": 100}, ValueError, "vocab_size must be in [258, 65535]"),
    ({"data": []}, ValueError, "at least one --data"),
    ({"resume": "yes"}, TypeError, "resume must be a bool"),
]


@pytest.mark.parametrize(("overrides", "error", "fragment"), BAD_CONFIG, ids=str)
def test_train_config_is_validated_before_anything_runs(
    setup, tmp_path, overrides, error, fragment
):
    with pytest.raises(error) as err:
        setup.config(tmp_path / "never", **overrides)
    # the kind asked for (ArgumentValueError is a ValueError, ArgumentTypeError a TypeError)
    assert issubclass(err.type, error) and fragment in str(err.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("seq_len", [-1, 0])
def test_eval_window_must_be_a_usable_length(setup, finished_run, tiny_data, seq_len):
    ckpt = load_checkpoint(finished_run / "checkpoints" / "step_0000002")
    with pytest.raises(ValueError, match="seq_len must be"):
        evaluate_file(ckpt.model, ckpt.tokenizer, tiny_data / "test.txt", seq_len)


def test_eval_window_bound_is_the_position_table_for_the_transformer(small_checkpoints, tiny_data):
    ckpt = load_checkpoint(small_checkpoints["transformer"])
    with pytest.raises(ValueError, match=r"seq_len must be in \[1, 5000\], got 5001"):
        evaluate_file(ckpt.model, ckpt.tokenizer, tiny_data / "test.txt", 5001)


# ---------------------------------------------------------------------- finding: crashes
def test_tiny_temperature_samples_the_argmax():
    rows = np.array([[0.0, 3.0, 2.9, -1.0], [5.0, 1.0, 4.99, 0.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    for t in (1e-300, 5e-324, 1e-30):
        assert [sample_next(row, temperature=t, rng=rng) for row in rows] == [1, 0]


def test_bare_models_generate_with_a_tiny_temperature(small_checkpoints):
    model = load_checkpoint(small_checkpoints["lstm"]).model
    greedy = model.generate([1, 40], max_length=5, temperature=0)
    assert model.generate([1, 40], max_length=5, temperature=1e-300, seed=0) == greedy


def test_training_on_invalid_utf8_without_tokenizer_replaces_and_warns(setup, tmp_path):
    text = b"The cat sat on the mat. It was a sunny day.\n" * 400
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text[:5000] + b"\xff\xfe broken \xc3(" + text[5000:])  # 3 bad sequences
    with pytest.warns(UserWarning, match=r"3 invalid UTF-8 byte sequence\(s\) replaced"):
        final = train(setup.config(tmp_path / "run", data=[str(bad)], tokenizer=None, steps=1))
    load_checkpoint(final)  # trained: raises if its tokenizer and model disagree


# ---------------------------------------------------------------------- the console script
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "fastlm.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _train_args(setup, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "lstm",
        "--data",
        str(setup.train),
        "--tokenizer",
        str(setup.tok),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--cache-dir",
        str(setup.cache),
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--steps", "0"], "steps must be >= 1, got 0"),
        (["--steps", "2", "--grad-clip", "-1"], "grad_clip must be > 0.0, got -1.0"),
    ],
    ids=["steps-0", "grad-clip-negative"],
)
def test_cli_train_refuses_bad_numbers(setup, tmp_path, extra, fragment):
    res = _cli(*_train_args(setup, tmp_path / "run", *extra))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and fragment in res.stderr
    assert not (tmp_path / "run").exists()


def test_cli_train_refuses_an_existing_run(setup, finished_run):
    before = _snapshot(finished_run)
    res = _cli(*_train_args(setup, finished_run, "--steps", "3"))
    assert res.returncode == 1 and "pass --resume" in res.stderr  # 1: error, 2: bad flags
    assert res.stderr.count("\n") == 1
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("seq_len", ["0", "-1"])
def test_cli_eval_refuses_an_empty_window(finished_run, tiny_data, seq_len):
    before = _snapshot(finished_run)
    res = _cli(
        "eval", str(finished_run), "--data", str(tiny_data / "test.txt"), "--seq-len", seq_len
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "seq_len must be" in res.stderr
    assert _snapshot(finished_run) == before  # the run itself is untouched by eval
