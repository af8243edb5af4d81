"""Training: learning, exact resume (also after SIGKILL), data pipeline errors, cache, schedule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fastlm.training.data as data_mod
import fastlm.training.trainer as trainer_mod
from fastlm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_trainer_state,
    verify_checkpoint,
)
from fastlm.cli import main
from fastlm.training import train
from fastlm.training.data import WindowSampler, read_text, resolve_text_files, token_stream
from fastlm.training.trainer import lr_at


@pytest.fixture(scope="module")
def setup(train_setup):
    """Paths shared by the runs here (training text, a saved tokenizer, a token cache) and
    `config(out, **overrides)`: a small, fast run of the real (SPEC-sized) models."""
    return train_setup


def _log(run: Path, event: str = "train") -> list[dict]:
    lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (
            f"{name} differs: max {(a[name] - b[name]).abs().max()}"
        )


# ---------------------------------------------------------------------- learning
def test_loss_falls(setup, tmp_path):
    run = tmp_path / "run"
    final = train(
        setup.config(
            run,
            batch_size=8,
            seq_len=32,
            steps=200,
            warmup_steps=10,
            eval_every=200,
            eval_tokens=2048,
        )
    )
    losses = [r["loss"] for r in _log(run)]
    assert len(losses) == 200 and all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    vocab = load_checkpoint(final).config.vocab_size
    # near-uniform at the start: about ln(V) (7.6 for 2,000); the first 20 steps already learn,
    # more on the small fallback corpus (6.46 measured there) than on ../shared/data/tiny
    assert first > 0.8 * math.log(vocab)
    assert last < first - 0.8, (first, last)
    (ev,) = _log(run, "eval")
    assert ev["step"] == 200 and ev["valid_loss"] < first
    assert math.isfinite(ev["valid_bits_per_byte"]) and ev["valid_bits_per_byte"] > 0
    assert load_checkpoint(final, expect_architecture="lstm").config.dropout == 0.2


# ---------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


def _run_crashing_after(setup, out: Path, crash_step: int, monkeypatch, **kw) -> None:
    """Run with the same budget as the straight run, crashing right after checkpoint crash_step."""
    real_save = trainer_mod.save_step

    def save_then_crash(out_dir, model, tok, optimizer, state, keep):
        real_save(out_dir, model, tok, optimizer, state, keep)
        if state["step"] == crash_step:
            raise _Crash

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "save_step", save_then_crash)
        with pytest.raises(_Crash):
            train(setup.config(out, **kw))
    assert (out / "latest").read_text().strip() == f"checkpoints/step_{crash_step:07d}"


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
@pytest.mark.parametrize("dropout", [0.0, None], ids=["dropout0", "dropout-default"])
def test_resume_is_exact(setup, tmp_path, monkeypatch, arch, dropout):
    """N steps straight == N/2 steps, crash, --resume for the rest: identical weights and state.

    With the default dropout (0.2) this checks that dropout masks are a function of the step.
    """
    kw = dict(model=arch, dropout=dropout, steps=8, ckpt_every=4, warmup_steps=3)
    straight = train(setup.config(tmp_path / "straight", **kw))
    _run_crashing_after(setup, tmp_path / "resumed", 4, monkeypatch, **kw)
    resumed = train(setup.config(tmp_path / "resumed", resume=True, **kw))
    assert resumed.name == straight.name == "step_0000008"
    _assert_same_tensors(_weights(straight), _weights(resumed))
    _assert_same_tensors(
        load_file(str(straight / "optimizer.safetensors")),
        load_file(str(resumed / "optimizer.safetensors")),
    )
    a, b = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 9))  # one uninterrupted log
    assert [(r["loss"], r["lr"]) for r in a] == [(r["loss"], r["lr"]) for r in b]
    assert load_trainer_state(resumed)["tokens_seen"] == 8 * 4 * 16


def test_resume_builds_model_from_checkpoint_config(setup, tmp_path, monkeypatch):
    """A different --dropout on --resume neither breaks nor changes the model (warned)."""
    kw = dict(steps=6, ckpt_every=3, dropout=0.0)
    straight = train(setup.config(tmp_path / "straight", **kw))
    _run_crashing_after(setup, tmp_path / "resumed", 3, monkeypatch, **kw)
    with pytest.warns(UserWarning, match=r"--dropout 0.5 ignored on --resume"):
        resumed = train(setup.config(tmp_path / "resumed", resume=True, **{**kw, "dropout": 0.5}))
    assert json.loads((resumed / "config.json").read_text())["dropout"] == 0.0
    _assert_same_tensors(_weights(straight), _weights(resumed))


def test_resume_finished_run_and_past_budget(setup, tmp_path):
    run = tmp_path / "run"
    final = train(setup.config(run, steps=4))
    assert train(setup.config(run, steps=4, resume=True)) == final  # nothing left to do
    with pytest.raises(ValueError, match="past this run's budget"):
        train(setup.config(run, steps=2, resume=True))


def test_resume_without_checkpoint(setup, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(setup.config(tmp_path / "empty", resume=True))
    assert not (tmp_path / "empty" / "checkpoints").exists()


def test_resume_wrong_architecture(setup, tmp_path):
    run = tmp_path / "run"
    train(setup.config(run, steps=2))
    with pytest.raises(CheckpointError, match="holds a lstm model, not a transformer"):
        train(setup.config(run, model="transformer", steps=4, resume=True))


def _latest_step(run: Path) -> int | None:
    try:
        name = (run / "latest").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(name.rsplit("_", 1)[1]) if name else None


def test_sigkill_then_resume(setup, tmp_path):
    """kill -9 in the middle of training; --resume continues from the last complete checkpoint and
    ends with exactly the weights of an uninterrupted run (constant LR after warm-up, so the
    budget change of the resumed run does not matter)."""
    run = tmp_path / "killed"
    args = [
        "--model",
        "lstm",
        "--data",
        str(setup.train),
        "--tokenizer",
        str(setup.tok),
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--min-lr-ratio",
        "1.0",
        "--dropout",
        "0.0",
        "--ckpt-every",
        "3",
        "--log-every",
        "1",
        "--eval-every",
        "1000000",
        "--threads",
        "1",
        "--cache-dir",
        str(setup.cache),
        "--no-progress",
    ]
    cmd = [
        sys.executable,
        "-m",
        "fastlm.cli",
        "train",
        *args,
        "--out",
        str(run),
        "--steps",
        "100000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 120
            while (_latest_step(run) or 0) < 6:
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
            time.sleep(0.1)  # land somewhere in the following steps / checkpoint write
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
    assert proc.returncode == -9

    k = _latest_step(run)
    ckpt = run / "checkpoints" / f"step_{k:07d}"
    verify_checkpoint(ckpt)
    load_checkpoint(ckpt, expect_architecture="lstm")  # raises on any defect
    assert load_trainer_state(ckpt)["step"] == k

    total = k + 4
    assert main(["train", *args, "--out", str(run), "--steps", str(total), "--resume"]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "straight"), "--steps", str(total)]) == 0
    name = f"step_{total:07d}"
    _assert_same_tensors(
        _weights(run / "checkpoints" / name), _weights(tmp_path / "straight" / "checkpoints" / name)
    )
    assert [r["step"] for r in _log(run)] == list(range(1, total + 1))


# ---------------------------------------------------------------------- data pipeline
def test_missing_empty_and_textless_paths(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        resolve_text_files([tmp_path / "nothing.txt"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        resolve_text_files([tmp_path / "empty.txt"])
    (tmp_path / "notext").mkdir()
    (tmp_path / "notext" / "README.md").write_text("not a .txt file")
    with pytest.raises(ValueError, match="holds no .txt files"):
        resolve_text_files([tmp_path / "notext"])
    with pytest.raises(ValueError, match="no data paths"):
        resolve_text_files([])
    # through the trainer too, before any run state is written
    for bad in (tmp_path / "nothing.txt", tmp_path / "empty.txt", tmp_path / "notext"):
        with pytest.raises((FileNotFoundError, ValueError), match=bad.name):
            train(setup.config(tmp_path / "run", data=[str(bad)]))
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_directory_expansion(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for name in ("train-01.txt", "train-00.txt", "valid.txt"):
        (d / name).write_text(name)
    assert [p.name for p in resolve_text_files([d])] == ["train-00.txt", "train-01.txt"]
    other = tmp_path / "other"
    other.mkdir()
    for name in ("b.txt", "a.txt", "c.md"):
        (other / name).write_text(name)
    assert [p.name for p in resolve_text_files([other])] == ["a.txt", "b.txt"]


def test_invalid_utf8_is_replaced_counted_and_warned(tmp_path, tiny_tokenizer):
    raw = b"caf\xc3\xa9 \xff\xfe ok\n\x80 end \xe2\x82 half\n\xef\xbf\xbd real\n"
    expected = raw.decode("utf-8", errors="replace")  # Python's own replacement, as the oracle
    n_bad = expected.count("\ufffd") - 1  # the last one is a genuine U+FFFD in the input
    f = tmp_path / "bad.txt"
    f.write_bytes(raw)
    with pytest.warns(UserWarning, match=rf"bad\.txt: {n_bad} invalid UTF-8"):
        text, bad = read_text(f)
    assert (text, bad) == (expected, n_bad)
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        stream = token_stream([f], tiny_tokenizer)
    assert tiny_tokenizer.decode(stream[:-1]) == expected


def test_valid_utf8_does_not_warn(tmp_path, recwarn):
    f = tmp_path / "good.txt"
    f.write_text("plain text \ufffd and 日本語\n", encoding="utf-8")
    assert read_text(f) == ("plain text \ufffd and 日本語\n", 0)
    assert not [w for w in recwarn if "UTF-8" in str(w.message)]


@pytest.mark.parametrize("seq_len", [1, 0, -3])
def test_seq_len_too_short(setup, tmp_path, seq_len):
    with pytest.raises(ValueError, match="seq_len must be > 1"):
        setup.config(tmp_path, seq_len=seq_len)
    with pytest.raises(ValueError, match="seq_len must be > 1"):
        WindowSampler(np.arange(100, dtype=np.uint16), seq_len, 2, seed=0)


def test_too_little_data_for_seq_len():
    with pytest.raises(ValueError, match="fewer than seq_len"):
        WindowSampler(np.arange(10, dtype=np.uint16), 9, 2, seed=0)


def test_token_cache_is_reused(tmp_path, tiny_tokenizer, monkeypatch):
    f = tmp_path / "text.txt"
    f.write_text("a small text to tokenise, once\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    first = token_stream([f], tiny_tokenizer, cache)
    (cached,) = cache.glob("tokens-*.npy")
    mtime = cached.stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the second run must read the cache, not re-tokenise")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "tokenize_text", no_tokenizing)
        second = token_stream([f], tiny_tokenizer, cache)
    np.testing.assert_array_equal(first, second)
    assert cached.stat().st_mtime_ns == mtime
    expected = tiny_tokenizer.encode(f.read_text(encoding="utf-8")) + [1]
    assert first.tolist() == expected  # each file ends with <|endoftext|>
    # new contents -> a new key -> tokenised again
    f.write_text("different contents\n", encoding="utf-8")
    assert token_stream([f], tiny_tokenizer, cache).tolist() == tiny_tokenizer.encode(
        "different contents\n"
    ) + [1]
    assert len(list(cache.glob("tokens-*.npy"))) == 2


def test_window_sampler_is_a_function_of_step():
    stream = np.arange(1000, dtype=np.uint16)
    a = WindowSampler(stream, 16, 4, seed=3)
    b = WindowSampler(stream, 16, 4, seed=3)
    x, y = a.batch(7)
    torch.testing.assert_close(b.batch(7)[0], x)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    torch.testing.assert_close(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
    assert not torch.equal(a.batch(8)[0], x)
    # two ranks read disjoint shards: rank 0 the first half of the stream, rank 1 the second
    r0 = WindowSampler(stream, 16, 4, seed=3, rank=0, world_size=2)
    r1 = WindowSampler(stream, 16, 4, seed=3, rank=1, world_size=2)
    for step in range(20):
        rows0, rows1 = torch.cat(r0.batch(step)), torch.cat(r1.batch(step))
        assert int(rows0.max()) < 500 <= int(rows1.min())


def test_token_budget_to_steps(setup, tmp_path):
    per_step = 4 * 16
    final = train(setup.config(tmp_path / "run", steps=None, tokens=5 * per_step + per_step - 1))
    assert final.name == "step_0000005" and final.is_dir()
    state = load_trainer_state(final)
    assert state["step"] == 5 and state["tokens_seen"] == 5 * per_step
    assert [r["tokens"] for r in _log(tmp_path / "run")] == [per_step * s for s in range(1, 6)]


# ---------------------------------------------------------------------- LR schedule
def _expected_lr(step: int, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    floor = lr * min_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_lr_schedule_shape(setup, tmp_path):
    cfg = setup.config(tmp_path, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    total = 100
    lrs = [lr_at(s, total, cfg) for s in range(total + 5)]
    for s, value in enumerate(lrs):
        assert value == pytest.approx(_expected_lr(s, 1e-3, 10, total, 0.1), rel=1e-12), s
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:total], lrs[11 : total + 1]))  # cosine falls
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert lrs[total] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4)


def test_trainer_follows_lr_schedule(setup, tmp_path):
    train(setup.config(tmp_path / "run", steps=10, warmup_steps=3, lr=2e-3, min_lr_ratio=0.1))
    logged = [r["lr"] for r in _log(tmp_path / "run")]
    assert logged == pytest.approx([_expected_lr(s, 2e-3, 3, 10, 0.1) for s in range(10)])
