"""The training loop: AdamW, warm-up + cosine LR, clipping, eval, atomic checkpoints, resume, DDP.

The run directory (`--out`) and its checkpoints: fastlm/training/run_dir.py.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastlm.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    load_trainer_state,
)
from fastlm.io import atomic_write_text
from fastlm.limits import MAX_VOCAB
from fastlm.models import ModelConfig, build_model, config_classes
from fastlm.models.layers import NextTokenLogits
from fastlm.threads import torch_threads
from fastlm.tokenizer import Tokenizer
from fastlm.training.data import (
    WindowSampler,
    resolve_text_files,
    seed_of,
    token_stream,
    train_tokenizer,
)
from fastlm.training.distributed import DistInfo, barrier, setup_distributed, wrap_ddp
from fastlm.training.evaluate import prepare_eval_stream, stream_nll
from fastlm.training.run_dir import (
    RunLog,
    check_new_run_dir,
    clear_partial_run,
    find_resume,
    save_step,
)
from fastlm.validation import (
    check_float,
    check_int,
    check_optional_int,
    check_positive_int,
    check_seed,
)


@dataclass
class TrainConfig:
    model: str = "transformer"  # "lstm" | "transformer"
    data: list[str] = field(default_factory=list)  # text files or directories
    out: str = "runs/default"
    valid: str | None = None  # valid text file; default: valid.txt beside the data
    tokenizer: str | None = None  # tokenizer.json; trained on the data when absent
    vocab_size: int = 2000
    batch_size: int = 32  # per rank
    seq_len: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float | None = None  # None keeps the SPEC's 0.2
    tokens: int | None = None  # token budget (all ranks); converted to steps
    steps: int | None = None  # step budget; one of tokens/steps is required
    eval_every: int = 200
    eval_tokens: int = 65_536  # valid tokens scored per evaluation
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    threads: int | None = None
    cache_dir: str | None = None  # token cache; default ~/.cache/fastlm/tokens
    device: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        """Every field checked here, before any file is touched or tensor allocated: the CLI and
        the API share these checks (fastlm.validation)."""
        configs = config_classes()
        if self.model not in configs:
            raise ValueError(f"--model must be one of {sorted(configs)}, got {self.model!r}")
        if check_int(self.seq_len, "seq_len") <= 1:
            raise ValueError(f"seq_len must be > 1, got {self.seq_len}")
        limit = configs[self.model]().max_len  # the SPEC config's context (None: unbounded)
        if limit is not None and self.seq_len > limit:
            raise ValueError(
                f"seq_len {self.seq_len} is longer than the {self.model} model's position "
                f"table ({limit})"
            )
        if self.tokens is None and self.steps is None:
            raise ValueError("give a budget: --tokens or --steps")
        check_optional_int(self.tokens, "tokens", min=1)
        check_optional_int(self.steps, "steps", min=1)  # 0 steps would write no checkpoint
        check_int(self.vocab_size, "vocab_size", min=258, max=MAX_VOCAB)
        for name in ("batch_size", "eval_every", "eval_tokens", "ckpt_every", "log_every"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.keep_checkpoints, "keep_checkpoints")
        check_int(self.warmup_steps, "warmup_steps", min=0)
        check_float(self.lr, "lr", min=0.0, min_open=True)
        check_float(self.min_lr_ratio, "min_lr_ratio", min=0.0, max=1.0)
        check_float(self.weight_decay, "weight_decay", min=0.0)
        # a negative max-norm flips every gradient (training uphill); 0 freezes the model
        check_float(self.grad_clip, "grad_clip", min=0.0, min_open=True)
        if self.dropout is not None:
            check_float(self.dropout, "dropout", min=0.0, max=1.0, max_open=True)
        check_seed(self.seed)
        check_optional_int(self.threads, "threads", min=1)
        if not isinstance(self.data, list | tuple) or not self.data:
            raise ValueError("give at least one --data file or directory")
        for name in ("resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at `total`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train(cfg: TrainConfig) -> Path:
    """Train per `cfg`; returns the path of the final checkpoint. cfg.threads: torch's thread
    count for the run, restored after it."""
    with torch_threads(cfg.threads or None):
        return _train(cfg)


def _train(cfg: TrainConfig) -> Path:
    dist = setup_distributed(cfg.device)
    out = Path(cfg.out)
    resume_dir = find_resume(out, dist.is_main) if cfg.resume else None
    if resume_dir is None:
        check_new_run_dir(out, cfg.resume)  # every rank, before rank 0 writes anything into it
    if dist.is_main:
        if cfg.resume and resume_dir is None:
            clear_partial_run(out, cfg.tokenizer)
        out.mkdir(parents=True, exist_ok=True)
    barrier(dist)
    tok = _get_tokenizer(cfg, out, dist, resume_dir)
    files = resolve_text_files(cfg.data)
    cache = cfg.cache_dir or os.path.join(Path.home(), ".cache", "fastlm", "tokens")
    if dist.is_main:
        stream = token_stream(files, tok, cache)
    barrier(dist)
    stream = token_stream(files, tok, cache)  # now a cache hit on every rank
    sampler = WindowSampler(stream, cfg.seq_len, cfg.batch_size, cfg.seed, dist.rank, dist.world)
    valid_stream, valid_bytes_per_token = _valid_stream(cfg, files, tok)

    torch.manual_seed(cfg.seed)
    model = build_model(_model_config(cfg, tok, resume_dir)).to(dist.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    step, tokens_seen, elapsed = 0, 0, 0.0
    if resume_dir is not None:
        step, tokens_seen, elapsed = _restore(resume_dir, model, optimizer, cfg)
    ddp_model = wrap_ddp(NextTokenLogits(model), dist)

    tokens_per_step = cfg.batch_size * cfg.seq_len * dist.world
    total = cfg.steps if cfg.steps is not None else max(1, cfg.tokens // tokens_per_step)
    if step > total:
        raise ValueError(
            f"--resume: {resume_dir} is at step {step}, past this run's budget of {total} steps; "
            "give a larger --steps or --tokens"
        )
    log = RunLog(out / "log.jsonl", dist.is_main, truncate_after=step if resume_dir else None)
    if dist.is_main and resume_dir is None:
        atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2))
    autocast = dist.device.type == "cuda"
    bar = tqdm(
        total=total,
        initial=step,
        disable=not (dist.is_main and cfg.progress),
        desc=f"train {cfg.model}",
        dynamic_ncols=True,
    )
    model.train()
    t_last, tok_last = time.perf_counter(), 0
    while step < total:
        lr = lr_at(step, total, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(seed_of(cfg.seed, dist.rank, step))  # dropout: a function of the step
        inputs, targets = (t.to(dist.device, non_blocking=True) for t in sampler.batch(step))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = ddp_model(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        tokens_seen += tokens_per_step
        tok_last += tokens_per_step
        if step % cfg.log_every == 0 or step == total:
            now = time.perf_counter()
            tps = tok_last / (now - t_last)
            elapsed += now - t_last
            t_last, tok_last = now, 0
            rec = {
                "event": "train",
                "step": step,
                "tokens": tokens_seen,
                "loss": loss.item(),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": tps,
                "time": elapsed,
            }
            log.write(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        bar.update(1)
        if valid_stream is not None and (step % cfg.eval_every == 0 or step == total):
            nll, n = stream_nll(model, valid_stream, cfg.seq_len, cfg.eval_tokens, dist.device)
            log.write(
                {
                    "event": "eval",
                    "step": step,
                    "tokens": tokens_seen,
                    "valid_loss": nll / n,
                    "valid_ppl": math.exp(nll / n),
                    "valid_bits_per_byte": nll / n / math.log(2) / valid_bytes_per_token,
                }
            )
        if step % cfg.ckpt_every == 0 or step == total:
            state = {
                "step": step,
                "tokens_seen": tokens_seen,
                "time": elapsed,
                "seq_len": cfg.seq_len,
                "world_size": dist.world,
                "config": asdict(cfg),
            }
            if dist.is_main:
                save_step(out, model, tok, optimizer, state, cfg.keep_checkpoints)
            barrier(dist)
        if step % cfg.log_every == 0:
            t_last = time.perf_counter()  # tokens/s and time count training work only
    bar.close()
    # the checkpoint of the last step (on a finished --resume: the one resumed from)
    return out / "checkpoints" / f"step_{step:07d}"


# ---------------------------------------------------------------------- helpers
def _get_tokenizer(cfg: TrainConfig, out: Path, dist: DistInfo, resume_dir) -> Tokenizer:
    if resume_dir is not None:
        return load_checkpoint(resume_dir).tokenizer
    if cfg.tokenizer:
        return Tokenizer.load(cfg.tokenizer)
    path = out / "tokenizer.json"
    if dist.is_main and not path.is_file():
        train_tokenizer(resolve_text_files(cfg.data), cfg.vocab_size).save(path)
    barrier(dist)
    return Tokenizer.load(path)


def _model_config(cfg: TrainConfig, tok: Tokenizer, resume_dir: Path | None) -> ModelConfig:
    """The config to build: on --resume the checkpoint's own config.json (a flag such as
    --dropout must not change a model mid-run); otherwise --model's SPEC config + --dropout."""
    if resume_dir is not None:
        saved = load_checkpoint(resume_dir, expect_architecture=cfg.model).config
        if cfg.dropout is not None and cfg.dropout != saved.dropout:
            warnings.warn(
                f"--dropout {cfg.dropout} ignored on --resume: {resume_dir} was trained with "
                f"dropout {saved.dropout}",
                stacklevel=3,
            )
        return saved
    model_cfg = config_classes()[cfg.model](vocab_size=tok.vocab_size)
    if cfg.dropout is not None:
        model_cfg.dropout = cfg.dropout
    return model_cfg


def _valid_stream(cfg: TrainConfig, files: list[Path], tok: Tokenizer):
    valid = Path(cfg.valid) if cfg.valid else files[0].parent / "valid.txt"
    if not valid.is_file():
        if cfg.valid:
            raise FileNotFoundError(f"valid file not found: {valid}")
        return None, 0.0
    stream, n_bytes = prepare_eval_stream(tok, valid)
    return stream, n_bytes / max(1, len(stream) - 1)


def _restore(ckpt: Path, model, optimizer, cfg: TrainConfig) -> tuple[int, int, float]:
    loaded = load_checkpoint(ckpt, expect_architecture=cfg.model)
    model.load_state_dict(loaded.model.state_dict())
    load_optimizer_state(ckpt, optimizer)
    state = load_trainer_state(ckpt)
    return int(state["step"]), int(state["tokens_seen"]), float(state.get("time", 0.0))
