"""DDP under torchrun on the CPU (gloo): two ranks, one writer, gradients really averaged."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fastlm.checkpoint import load_checkpoint, load_trainer_state
from fastlm.models import LSTMConfig, build_model
from fastlm.threads import torch_threads
from fastlm.training.data import WindowSampler, token_stream

BATCH, SEQ, STEPS, WORLD, LR, WARMUP = 4, 16, 6, 2, 3e-3, 2


def _emulate_ddp(train_file, tokenizer, cache) -> dict[str, torch.Tensor]:
    """The same run in one process, averaging the two ranks' gradients by hand (one thread,
    like each torchrun rank)."""
    with torch_threads(1):
        return _emulate_ddp_run(train_file, tokenizer, cache)


def _emulate_ddp_run(train_file, tokenizer, cache) -> dict[str, torch.Tensor]:
    stream = token_stream([train_file], tokenizer, cache)
    samplers = [
        WindowSampler(stream, SEQ, BATCH, seed=0, rank=r, world_size=WORLD) for r in range(WORLD)
    ]
    torch.manual_seed(0)
    model = build_model(LSTMConfig(vocab_size=tokenizer.vocab_size, dropout=0.0)).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.98), weight_decay=0.01)
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / WARMUP)  # --min-lr-ratio 1: flat after warm-up
        grads = []
        for sampler in samplers:
            x, y = sampler.batch(step)
            loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
            grads.append(torch.autograd.grad(loss, params))
        for p, g0, g1 in zip(params, *grads):
            p.grad = g0 / WORLD + g1 / WORLD
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_torchrun_two_ranks(tmp_path, tiny_data, tiny_tokenizer):
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    run, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        "-m",
        "fastlm.cli",
        "train",
        "--model",
        "lstm",
        "--data",
        str(tiny_data / "train.txt"),
        "--tokenizer",
        str(tok),
        "--out",
        str(run),
        "--tokens",
        str(STEPS * BATCH * SEQ * WORLD),  # budget counts all ranks
        "--batch-size",
        str(BATCH),
        "--seq-len",
        str(SEQ),
        "--lr",
        str(LR),
        "--warmup-steps",
        str(WARMUP),
        "--min-lr-ratio",
        "1.0",
        "--dropout",
        "0.0",
        "--ckpt-every",
        "3",
        "--eval-every",
        str(STEPS),
        "--eval-tokens",
        "128",
        "--log-every",
        "1",
        "--threads",
        "1",
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("final checkpoint:") == WORLD  # both ranks ran to the end

    # one writer: every step logged once, one eval, complete checkpoints and nothing else
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if r["event"] == "eval"] == [STEPS]
    assert all(math.isfinite(r["loss"]) for r in records if r["event"] == "train")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000003",
        "step_0000006",
    ]
    final = run / "checkpoints" / "step_0000006"
    state = load_trainer_state(final)
    assert (state["world_size"], state["step"]) == (WORLD, STEPS)
    assert state["tokens_seen"] == STEPS * BATCH * SEQ * WORLD
    assert load_checkpoint(final, expect_architecture="lstm").config.dropout == 0.0

    # synchronised: the saved weights are those of averaged gradients, not of rank 0 alone
    expected = _emulate_ddp(tiny_data / "train.txt", tiny_tokenizer, cache)
    saved = load_file(str(final / "model.safetensors"))
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, atol=1e-5, rtol=1e-4, msg=name)
