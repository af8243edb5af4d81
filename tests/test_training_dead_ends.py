"""Runs killed at awkward moments must lead somewhere that works: every message a re-run prints
names a step that succeeds (no flag that does not exist, no loop between two errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_lm, tiny_tower_data
from safetensors.torch import load_file

from fastlm.checkpoint import CheckpointError
from fastlm.cli import main
from fastlm.embedding.trainer import EmbedTrainConfig, TowerTrainer
from fastlm.models.embedder import new_tower
from fastlm.training import train


# ---------------------------------------------------------------------- LM trainer
def _logged_steps(run: Path) -> list[int]:
    records = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    return [r["step"] for r in records if r["event"] == "train"]


def _killed_before_first_checkpoint(setup, out: Path) -> None:
    """What a run killed before its first checkpoint leaves: its config, a log, a tokenizer
    and a half-written checkpoint directory, but no `latest`."""
    config = setup.config(out, steps=4)
    out.mkdir(parents=True)
    (out / "train_config.json").write_text(json.dumps({"model": config.model}))
    (out / "log.jsonl").write_text('{"event": "train", "step": 1, "loss": 7.6}\n{"ev')
    shutil.copyfile(setup.tok, out / "tokenizer.json")
    (out / "checkpoints" / ".step_0000002.abc.tmp").mkdir(parents=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(train_setup, tmp_path):
    """--resume with nothing to resume from, in a directory that holds only a run's partial
    state: the run starts from step 0 in place (warned), and its stale log is not kept."""
    run = tmp_path / "run"
    _killed_before_first_checkpoint(train_setup, run)
    with pytest.warns(UserWarning, match="no checkpoint was written yet.*starting .*step 0"):
        final = train(train_setup.config(run, steps=4, resume=True))
    assert final.name == "step_0000004" and (run / "latest").is_file()
    steps = _logged_steps(run)
    assert steps == [1, 2, 3, 4]
    assert not list((run / "checkpoints").glob(".step_*"))


def test_without_resume_the_message_leads_to_a_run_that_works(train_setup, tmp_path, capsys):
    """The refusal without --resume names --resume, and following it works (exit 0)."""
    run = tmp_path / "run"
    _killed_before_first_checkpoint(train_setup, run)
    cfg = train_setup.config(run, steps=2)
    args = ["train", "--model", "lstm", "--data", *cfg.data, "--out", str(run), "--steps", "2"]
    args += ["--tokenizer", cfg.tokenizer, "--cache-dir", cfg.cache_dir, "--no-progress"]
    args += ["--batch-size", "4", "--seq-len", "16", "--threads", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "never wrote a checkpoint" in err and "--resume" in err
    assert main([*args, "--resume"]) == 0
    assert (run / "checkpoints" / "step_0000002").is_dir()


def test_resume_with_a_checkpoint_but_no_latest_continues_from_it(train_setup, tmp_path):
    """Killed between writing checkpoints/step_N and `latest`: --resume continues from step_N
    (the newest complete checkpoint) instead of starting over or failing."""
    run = tmp_path / "run"
    train(train_setup.config(run, steps=2))
    (run / "latest").unlink()
    with pytest.warns(UserWarning, match="step_0000002"):
        final = train(train_setup.config(run, steps=4, resume=True))
    assert final.name == "step_0000004"
    steps = _logged_steps(run)
    assert steps == [1, 2, 3, 4]  # continued, not restarted


def test_resume_never_deletes_a_damaged_checkpoint(train_setup, tmp_path):
    """No `latest` and a checkpoint that does not verify: refused, naming it, nothing deleted."""
    run = tmp_path / "run"
    train(train_setup.config(run, steps=2))
    (run / "latest").unlink()
    weights = run / "checkpoints" / "step_0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step_0000002.*remove it"):
        train(train_setup.config(run, steps=4, resume=True))
    assert weights.is_file()


# ---------------------------------------------------------------------- embedding tower
def _tower_trainer(out: Path, steps: int) -> TowerTrainer:
    pairs, distill = tiny_tower_data()
    cfg = EmbedTrainConfig(steps=steps, warmup=1, pair_batch=4, text_batch=8, save_every=2)
    return TowerTrainer(new_tower(tiny_lm("lstm")), cfg, pairs, distill, out)


def test_tower_resumes_from_a_step_newer_than_latest(tmp_path):
    """Killed after writing step_4 but before `latest` moved on from step_2: the resumed run
    continues from step_4 (it never saves over an existing step) and ends with the weights of
    an uninterrupted run."""
    straight = _tower_trainer(tmp_path / "straight", 6)
    straight.train(log=lambda _: None)
    killed = _tower_trainer(tmp_path / "killed", 6)
    killed.train(log=lambda _: None)
    shutil.rmtree(tmp_path / "killed" / "step_000006")  # the same budget, killed after step 4
    (tmp_path / "killed" / "latest").write_text("step_000002")
    resumed = _tower_trainer(tmp_path / "killed", 6)
    said = []
    assert resumed.resume(log=said.append) and resumed.step == 4
    assert "step_000004" in said[0] and "newer than latest" in said[0]
    resumed.train(log=lambda _: None)
    for name, value in straight.tower.state_dict().items():
        assert torch.equal(value, resumed.tower.state_dict()[name]), name
    assert (tmp_path / "killed" / "latest").read_text().strip() == "step_000006"


def test_tower_resume_skips_a_half_written_newer_step(tmp_path):
    """A newer step directory that is not complete is passed over (said), never loaded."""
    run = tmp_path / "run"
    _tower_trainer(run, 2).train(log=lambda _: None)
    (run / "step_000004").mkdir()
    (run / "step_000004" / "state.json").write_text("{")
    resumed = _tower_trainer(run, 6)
    said = []
    assert resumed.resume(log=said.append) and resumed.step == 2
    assert any("step_000004" in s and "skipped" in s for s in said)
    resumed.train(log=lambda _: None)  # saves step_000004 over the broken directory
    assert load_file(str(run / "step_000004" / "tower.safetensors"))


def test_tower_resume_names_a_missing_latest_target(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest").write_text("step_000008")
    with pytest.raises(ValueError, match="step_000008.*does not exist") as err:
        _tower_trainer(run, 6).resume(log=lambda _: None)
    assert "--force" not in str(err.value)
