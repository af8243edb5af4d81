"""The `fastlm` command: eval numbers against a direct NLL computation, and clear train errors."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fastlm.checkpoint import load_checkpoint
from fastlm.cli import main
from fastlm.training import TrainConfig, train


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_data, tiny_tokenizer):
    """Two short training runs (one per architecture) and a small text file to score."""
    root = tmp_path_factory.mktemp("cli")
    tok = root / "tokenizer.json"
    tiny_tokenizer.save(tok)
    common = dict(
        data=[str(tiny_data / "train.txt")],
        tokenizer=str(tok),
        batch_size=4,
        seq_len=16,
        steps=6,
        warmup_steps=2,
        lr=3e-3,
        ckpt_every=3,
        log_every=1,
        eval_every=10**6,
        progress=False,
        threads=1,
        cache_dir=str(root / "cache"),
    )
    runs = {arch: root / arch for arch in ("lstm", "transformer")}
    for arch, out in runs.items():
        train(TrainConfig(model=arch, out=str(out), **common))
    text = (tiny_data / "test.txt").read_text(encoding="utf-8")[:1500]
    text += "\nnaïve café — 日本語 🤖\n"
    score = root / "score.txt"
    score.write_text(text, encoding="utf-8")
    train_args = [
        "--data",
        str(tiny_data / "train.txt"),
        "--tokenizer",
        str(tok),
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--steps",
        "9",
        "--ckpt-every",
        "3",
        "--threads",
        "1",
        "--cache-dir",
        str(root / "cache"),
        "--no-progress",
    ]
    return SimpleNamespace(runs=runs, text=text, score=score, train_args=train_args)


def _direct_nll(ckpt, text: str, seq_len: int) -> tuple[float, int, int]:
    """(total NLL in nats, tokens scored, UTF-8 bytes) computed here from the SPEC's definition:
    the text's tokens after one <|endoftext|>, every token predicted once, in windows of
    seq_len (the LSTM carries its state, so one pass over everything is the same thing)."""
    ids = ckpt.tokenizer.encode(text)
    stream = torch.tensor([1] + ids)
    model = ckpt.model.eval()
    with torch.no_grad():
        if ckpt.config.architecture == "lstm":
            logits, _ = model(stream[:-1].unsqueeze(0))
            nll = F.cross_entropy(logits[0], stream[1:], reduction="sum").item()
        else:
            nll = 0.0
            for s in range(0, len(ids), seq_len):
                x, y = stream[s : s + seq_len], stream[s + 1 : s + seq_len + 1]
                logits = model(x[: len(y)].unsqueeze(0))[0]
                nll += F.cross_entropy(logits, y, reduction="sum").item()
    return nll, len(ids), len(text.encode("utf-8"))


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_eval_matches_direct_nll(env, arch, capsys):
    run = env.runs[arch]
    ckpt_dir = run / "checkpoints" / "step_0000006"
    ckpt = load_checkpoint(ckpt_dir)
    nll, n_tokens, n_bytes = _direct_nll(ckpt, env.text, seq_len=16)  # the training seq_len
    assert n_bytes > len(env.text)  # multi-byte characters are counted as bytes

    assert main(["eval", str(ckpt_dir), "--data", str(env.score)]) == 0
    out = capsys.readouterr().out
    assert f"{n_tokens} tokens, {n_bytes} bytes" in out
    ppl, bpb = map(float, re.search(r"perplexity ([\d.]+)\s+bits per byte ([\d.]+)", out).groups())
    assert ppl == pytest.approx(math.exp(nll / n_tokens), abs=1.5e-3, rel=1e-5)
    assert bpb == pytest.approx(nll / math.log(2) / n_bytes, abs=1.5e-4)

    # --json, on the run directory (its `latest` checkpoint), with an explicit window
    nll, _, _ = _direct_nll(ckpt, env.text, seq_len=37)
    assert main(["eval", str(run), "--data", str(env.score), "--json", "--seq-len", "37"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert Path(res["checkpoint"]) == ckpt_dir
    assert (res["tokens"], res["bytes"]) == (n_tokens, n_bytes)
    assert res["loss"] == pytest.approx(nll / n_tokens, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_eval_errors(env, tmp_path, capsys):
    ckpt = str(env.runs["lstm"])
    assert main(["eval", ckpt, "--data", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["eval", ckpt, "--data", str(tmp_path / "empty.txt")]) == 1
    assert "no text to score" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-such-model"), "--data", str(env.score)]) == 1
    assert "unknown model" in capsys.readouterr().err


def _train_error(args: list[str], capsys, code: int = 1) -> str:
    assert main(["train", "--model", "lstm", *args]) == code  # 1: error, 2: bad flag value
    err = capsys.readouterr().err
    assert err.startswith("fastlm train: error: ")
    return err


def test_train_data_errors(env, tmp_path, capsys):
    base = [a for a in env.train_args if a != "--data"][1:]  # drop "--data PATH"
    out = ["--out", str(tmp_path / "run")]
    assert "nothing.txt" in _train_error(
        ["--data", str(tmp_path / "nothing.txt"), *out, *base], capsys
    )
    (tmp_path / "empty.txt").write_text("")
    assert "empty.txt is empty" in _train_error(
        ["--data", str(tmp_path / "empty.txt"), *out, *base], capsys
    )
    (tmp_path / "notext").mkdir()
    assert "holds no .txt files" in _train_error(
        ["--data", str(tmp_path / "notext"), *out, *base], capsys
    )
    assert "seq_len must be > 1" in _train_error(
        [*env.train_args, *out, "--seq-len", "1"], capsys, code=2
    )


def test_train_budget_flags_are_exclusive(env, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--model",
                "lstm",
                *env.train_args,
                "--tokens",
                "100",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert exc.value.code == 2


def test_resume_without_checkpoint(env, tmp_path, capsys):
    err = _train_error([*env.train_args, "--out", str(tmp_path / "fresh"), "--resume"], capsys)
    assert "no checkpoint" in err
    assert not (tmp_path / "fresh" / "checkpoints").exists()


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x55
    f.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated-weights": ("model.safetensors", _truncate),
    "flipped-optimizer": ("optimizer.safetensors", _flip_byte),
    "garbage-state": ("trainer_state.json", lambda f: f.write_text("{")),
    "missing-manifest": ("manifest.json", Path.unlink),
    "truncated-tokenizer": ("tokenizer.json", _truncate),
    "missing-config": ("config.json", Path.unlink),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_resume_from_corrupt_checkpoint_names_the_file(env, tmp_path, capsys, case):
    """Never a silent fresh start: a clear error naming the file, and the run left untouched."""
    name, damage = CORRUPTIONS[case]
    run = tmp_path / "run"
    shutil.copytree(env.runs["lstm"], run)
    ckpt = run / "checkpoints" / "step_0000006"
    damage(ckpt / name)
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    err = _train_error([*env.train_args, "--out", str(run), "--resume"], capsys)
    assert str(ckpt) in err and name in err
    after = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    assert after == before


def test_resume_latest_names_missing_directory(env, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(env.runs["lstm"], run)
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    err = _train_error([*env.train_args, "--out", str(run), "--resume"], capsys)
    assert "step_0000006" in err and "does not exist" in err


def test_flag_choices_match_the_library():
    """The CLI spells its choices out (so --help needs no torch): they must be the library's."""
    from fastlm.cli.common import BACKEND_CHOICES, ONNX_DTYPES
    from fastlm.engine.registry import backend_names, get_backend_class
    from fastlm.export import DTYPES

    get_backend_class("eager")  # registers the optional backends this machine can import
    assert set(BACKEND_CHOICES) == {*backend_names(), "auto"}
    assert ONNX_DTYPES == DTYPES
