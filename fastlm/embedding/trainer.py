"""Train the embedding tower for similarity: CoSENT on scored pairs, inverse-cloze contrastive
pairs, and (optionally) teacher distillation.

The tower starts as a copy of the LM (models/embedder.py), so the language model itself is never
touched. Each step draws one batch from every source given: scored pairs (CoSENT); inverse-cloze
pairs (a sentence and the rest of its paragraph, in-batch InfoNCE: the retrieval task itself,
from unlabelled text); texts distilled with in-batch InfoNCE against a teacher (through a
training-only projection to the teacher's width) plus a cosine-matrix MSE. Runs save a
resumable state (safetensors + JSON) every `save_every` steps; a resumed run is bit-exact.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastlm.checkpoint import flatten_optimizer, unflatten_optimizer
from fastlm.embedding.contrastive import cached_pair_infonce
from fastlm.embedding.data import BatchSchedule, StsPairs, padded
from fastlm.embedding.losses import (
    cosent_loss,
    similarity_mse,
    teacher_infonce,
)
from fastlm.io import atomic_write_dir, atomic_write_text
from fastlm.models.embedder import EmbeddingTower


@dataclass
class EmbedTrainConfig:
    steps: int = 2000
    lr: float = 1e-4  # a fine-tune of trained weights: small steps
    warmup: int = 100
    weight_decay: float = 0.01
    pair_batch: int = 32  # scored pairs per step (CoSENT)
    text_batch: int = 128  # distillation texts per step (in-batch negatives)
    cloze_batch: int = 64  # query -> document pairs per step (in-batch negatives)
    chunk: int = 128  # texts embedded at once for the pairs' InfoNCE (GradCache: any batch fits)
    sts_weight: float = 1.0
    cloze_weight: float = 1.0
    infonce_weight: float = 1.0
    simmse_weight: float = 10.0  # the cosine-matrix MSE is ~1e-2 in size; this evens it out
    temperature: float = 0.05
    dropout: float = 0.0  # in the tower's encoder while training (regularises 5.7k pairs)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    eval_every: int = 200

    def __post_init__(self):
        names = ("steps", "warmup", "pair_batch", "text_batch", "cloze_batch", "save_every")
        for name in (*names, "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "warmup" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "temperature", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, float | int) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")


@dataclass
class ClozeSet:
    """Query -> document pairs for in-batch InfoNCE (inverse-cloze pairs or weak pairs such as
    title -> body and question -> passage), tokenised; `negatives[i]` is a hard negative of
    query i ([] where it has none)."""

    queries: list[list[int]]
    contexts: list[list[int]]
    negatives: list[list[int]] | None = None


@dataclass
class DistillSet:
    ids: list[list[int]]  # tokenised texts
    teacher: np.ndarray  # (N, Dt) float16, L2-normalised


def lr_at(step: int, cfg: EmbedTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class TowerTrainer:
    def __init__(
        self,
        tower: EmbeddingTower,
        cfg: EmbedTrainConfig,
        pairs: StsPairs | None,
        distill: DistillSet | None,
        out: str | Path,
        evaluate=None,
        cloze: ClozeSet | None = None,
    ):
        if pairs is None and distill is None and cloze is None:
            raise ValueError("nothing to train on: give scored pairs, cloze pairs or a teacher")
        self.tower, self.cfg, self.pairs, self.distill = tower, cfg, pairs, distill
        self.cloze = cloze
        self.out, self.evaluate = Path(out), evaluate
        self.out.mkdir(parents=True, exist_ok=True)
        params = list(tower.parameters())
        self.head = None
        if distill is not None:  # training-only projection to the teacher's width
            self.head = torch.nn.Linear(tower.dim, distill.teacher.shape[1])
            torch.manual_seed(cfg.seed)
            self.head.reset_parameters()
            params += list(self.head.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        if pairs is not None:
            lens = np.array([max(len(a), len(b)) for a, b in zip(pairs.left, pairs.right)])
            self.pair_schedule = BatchSchedule(lens, cfg.pair_batch, cfg.seed)
        if distill is not None:
            lens = np.array([len(s) for s in distill.ids])
            self.text_schedule = BatchSchedule(lens, cfg.text_batch, cfg.seed + 1)
        if cloze is not None:
            lens = np.array([len(s) for s in cloze.contexts])
            self.cloze_schedule = BatchSchedule(lens, cfg.cloze_batch, cfg.seed + 2)

    def _embed(self, seqs: list[list[int]]) -> torch.Tensor:
        ids, mask = padded(seqs)
        return self.tower(torch.from_numpy(ids), torch.from_numpy(mask))

    def _loss(self, step: int) -> tuple[torch.Tensor, dict]:
        cfg, parts = self.cfg, {}
        total = torch.zeros(())
        if self.pairs is not None:
            idx = self.pair_schedule(step)
            u = self._embed([self.pairs.left[i] for i in idx])
            v = self._embed([self.pairs.right[i] for i in idx])
            loss = cosent_loss(u, v, torch.from_numpy(self.pairs.gold[idx]))
            parts["cosent"] = loss.item()
            total = total + cfg.sts_weight * loss
        if self.cloze is not None:  # back-propagated here, chunk by chunk (GradCache)
            idx = self.cloze_schedule(step)
            negs = self.cloze.negatives or []
            parts["cloze"] = cached_pair_infonce(
                lambda seqs: self._embed(list(seqs)),
                [self.cloze.queries[i] for i in idx],
                [self.cloze.contexts[i] for i in idx],
                [negs[i] for i in idx if negs and negs[i]],
                cfg.temperature,
                cfg.chunk,
                cfg.cloze_weight,
            )
        if self.distill is not None:
            idx = self.text_schedule(step)
            z = self._embed([self.distill.ids[i] for i in idx])
            t = torch.from_numpy(self.distill.teacher[idx].astype(np.float32))
            nce = teacher_infonce(self.head(z), t, cfg.temperature)
            mse = similarity_mse(z, t)
            parts.update(infonce=nce.item(), simmse=mse.item())
            total = total + cfg.infonce_weight * nce + cfg.simmse_weight * mse
        return total, parts

    def train(self, log=print) -> None:
        cfg = self.cfg
        _set_dropout(self.tower, cfg.dropout)
        self.tower.train(cfg.dropout > 0)
        t0 = time.time()
        while self.step < cfg.steps:
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout masks: resume exact
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, cfg)
            self.opt.zero_grad(set_to_none=True)
            loss, parts = self._loss(self.step)
            if loss.requires_grad:
                loss.backward()
            loss = loss + self.cfg.cloze_weight * parts.get("cloze", 0.0)
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.opt.step()
            self.step += 1
            record = {"step": self.step, "loss": loss.item(), **parts, "seconds": time.time() - t0}
            last = self.step == cfg.steps
            evaluated = self.evaluate is not None and (self.step % cfg.eval_every == 0 or last)
            if evaluated:
                with torch.no_grad():
                    record.update(self.evaluate(self.tower))
            if self.step % cfg.save_every == 0 or last:
                self.save()
            if evaluated or self.step % 20 == 0:
                log(json.dumps(record))
                with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    # --------------------------------------------------------------- state
    def save(self) -> None:
        def fill(tmp: Path) -> None:
            save_file(self.tower.weights(), str(tmp / "tower.safetensors"))
            if self.head is not None:
                save_file(dict(self.head.state_dict()), str(tmp / "head.safetensors"))
            tensors, groups = flatten_optimizer(self.opt)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state = {"step": self.step, "config": asdict(self.cfg), "param_groups": groups}
            (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")

        self.out.mkdir(parents=True, exist_ok=True)
        # force: a step directory of this run's own that resume passed over (incomplete) is
        # replaced, never a reason to stop
        atomic_write_dir(self.out / f"step_{self.step:06d}", fill, force=True)
        atomic_write_text(self.out / "latest", f"step_{self.step:06d}")

    def resume(self, log=print) -> bool:
        """Load the newest complete saved state; returns whether there was one.

        A step directory newer than the one `latest` names (a run killed after writing step_N
        but before moving `latest` on) is resumed from when it loads, and `latest` moved to it;
        one that does not load is skipped (said through `log`). The state `latest` names must
        load: a ValueError names it otherwise."""
        pointer = self.out / "latest"
        named = _read_latest(pointer) if pointer.exists() else None
        floor = int(named[len("step_") :]) if named else -1
        for d in sorted(_step_dirs(self.out), reverse=True):
            if int(d.name[len("step_") :]) <= floor:
                break
            try:
                self._load(d)
            except ValueError as err:
                log(f"skipped {d}: {err}")
                continue
            log(f"resuming from {d}: newer than latest ({named or 'none'}), and complete")
            atomic_write_text(pointer, d.name)
            return True
        if named is None:
            return False
        if not (self.out / named).is_dir():
            raise ValueError(
                f"{pointer} names {named!r}, which does not exist: restore it, or remove "
                f"{pointer} to start the run over"
            )
        self._load(self.out / named)
        return True

    def _load(self, d: Path) -> None:
        """Restore the tower, head, optimizer and step saved in `d`; everything is read before
        anything changes, so a state that fails to load leaves the trainer as it was."""
        try:
            state = json.loads((d / "state.json").read_text(encoding="utf-8"))
            tower = load_file(str(d / "tower.safetensors"))
            head = load_file(str(d / "head.safetensors")) if self.head is not None else None
            opt = unflatten_optimizer(
                load_file(str(d / "optimizer.safetensors")), json.loads(state["param_groups"])
            )
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise ValueError(f"cannot resume from {d}: {err!r}") from None
        if state.get("step") != int(d.name[len("step_") :]):
            raise ValueError(f"cannot resume from {d}: its state.json is of another step")
        self.tower.load_state_dict(tower)
        if head is not None:
            self.head.load_state_dict(head)
        self.opt.load_state_dict(opt)
        self.step = state["step"]


_STEP_DIR = re.compile(r"step_\d{6}")


def _step_dirs(out: Path) -> list[Path]:
    """The run's step directories (not the temporary ones of a save in progress)."""
    return [d for d in out.glob("step_*") if _STEP_DIR.fullmatch(d.name) and d.is_dir()]


def _read_latest(pointer: Path) -> str:
    name = pointer.read_text(encoding="utf-8").strip()
    if not _STEP_DIR.fullmatch(name):
        raise ValueError(f"{pointer} must name a step directory (step_NNNNNN), got {name!r}")
    return name


def _set_dropout(tower: torch.nn.Module, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    for m in tower.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        # modules that apply dropout themselves keep its rate in a float attribute (nn.LSTM
        # between its layers, the Transformer's attention)
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = p


def embed_texts(tower: EmbeddingTower, seqs: list[list[int]], batch: int = 128) -> np.ndarray:
    """(n, D) L2-normalised float32 tower embeddings of token lists (empty -> zero row)."""
    out = np.zeros((len(seqs), tower.dim), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    tower.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = [i for i in order[s : s + batch] if seqs[i]]
            if idx:
                out[idx] = F.normalize(tower_forward(tower, [seqs[i] for i in idx]), dim=1).numpy()
    return out


class TowerEmbedder:
    """`embed(texts)` of a tower being trained, cut at `max_tokens`: what the evaluation
    functions (fastlm/embedding/evaluate.py) take, so training monitors measure as users do."""

    def __init__(self, tower: EmbeddingTower, tokenizer, max_tokens: int):
        self.tower, self.tokenizer, self.max_tokens = tower, tokenizer, max_tokens

    def embed(self, texts, batch_size: int = 128) -> np.ndarray:
        seqs = [s[: self.max_tokens] for s in self.tokenizer.encode_many(list(texts))]
        return embed_texts(self.tower, seqs, batch_size)


def tower_forward(tower: EmbeddingTower, seqs: list[list[int]]) -> torch.Tensor:
    ids, mask = padded(seqs)
    return tower(torch.from_numpy(ids), torch.from_numpy(mask))
