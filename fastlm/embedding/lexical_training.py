"""Training the table of the lexical branch (fastlm/char_ngrams.py) for ranking.

Texts are counted once (`count_ngrams`), so a step is one sparse bag sum per text
(`nn.EmbeddingBag`): thousands of texts a step cost milliseconds,
which is what lets the in-batch InfoNCE see >= 1,024 negatives on a CPU. Gradients are dense: a
batch touches ~10^6 (row, text) pairs, more than the table's rows, so sparse gradients would
be larger than the table and slower to apply. Three losses, each
optional:

- weak pairs (query -> positive [+ hard negative]): InfoNCE over the batch, both directions;
- distillation: the batch's cosine matrix matched to the teacher's (MSE) plus teacher-positive
  InfoNCE through a training-only linear head to the teacher's width;
- CoSENT on scored pairs (STS-B train, SICK train).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastlm.char_ngrams import NgramCounts, count_ngrams
from fastlm.embedding.losses import cosent_loss, similarity_mse, teacher_infonce


def take(counts: NgramCounts, idx: np.ndarray) -> NgramCounts:
    """The rows `idx` of `counts`, in that order."""
    idx = np.asarray(idx, dtype=np.int64)
    starts, ends = counts.indptr[idx], counts.indptr[idx + 1]
    lengths = ends - starts
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return NgramCounts(indptr, counts.slots[pos], counts.weights[pos])


def idf_scaled_table(counts: NgramCounts, buckets: int, dim: int, seed: int) -> np.ndarray:
    """(buckets, dim) float32 start: a fixed Gaussian projection with each row scaled by the
    slot's IDF over `counts` (the random-projection TF-IDF baseline, ranking already)."""
    df = np.bincount(counts.slots, minlength=buckets)
    idf = np.log((1 + len(counts)) / (1 + df)) + 1.0
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((buckets, dim), dtype=np.float32) / np.sqrt(dim)
    return (table * idf[:, None]).astype(np.float32)


class NgramBag(nn.Module):
    """The lexical branch in torch, for training: NgramCounts -> (n, dim) unit rows."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.bag = nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)),
            freeze=False,
            mode="sum",
        )

    def forward(self, counts: NgramCounts) -> torch.Tensor:
        out = self.bag(
            torch.from_numpy(counts.slots),
            torch.from_numpy(counts.indptr[:-1]),
            per_sample_weights=torch.from_numpy(counts.weights),
        )
        return F.normalize(out, dim=-1)

    def table(self) -> np.ndarray:
        return self.bag.weight.detach().numpy().copy()


@dataclass
class LexicalData:
    """Counted training texts. pair_* index into `texts`; negative -1 where a pair has none."""

    texts: NgramCounts
    pair_query: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_negative: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    distill_text: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    distill_vectors: np.ndarray | None = None  # (len(distill_text), teacher dim)
    scored_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scored_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scored_gold: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class TextTable:
    """Distinct texts -> row numbers, counted once at the end."""

    def __init__(self):
        self.rows: dict[str, int] = {}

    def ids(self, texts: Sequence[str]) -> np.ndarray:
        return np.fromiter(
            (self.rows.setdefault(t, len(self.rows)) for t in texts), np.int64, count=len(texts)
        )

    def count(self, buckets: int, chunk: int = 50_000) -> NgramCounts:
        texts = list(self.rows)
        parts = [count_ngrams(texts[i : i + chunk], buckets) for i in range(0, len(texts), chunk)]
        return concat_counts(parts)


def concat_counts(parts: Sequence[NgramCounts]) -> NgramCounts:
    offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts])
    indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return NgramCounts(
        indptr.astype(np.int64),
        np.concatenate([p.slots for p in parts]),
        np.concatenate([p.weights for p in parts]),
    )


@dataclass
class LexicalConfig:
    steps: int = 2000
    lr: float = 2e-3
    pair_batch: int = 1024
    distill_batch: int = 1024
    scored_batch: int = 256
    temperature: float = 0.05
    pair_weight: float = 1.0
    distill_weight: float = 1.0
    scored_weight: float = 1.0
    one_source_per_batch: bool = True
    seed: int = 0


class LexicalTrainer:
    def __init__(self, bag: NgramBag, data: LexicalData, cfg: LexicalConfig):
        self.bag, self.data, self.cfg = bag, data, cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.head = None
        params = list(bag.parameters())
        if data.distill_vectors is not None and len(data.distill_text) and cfg.distill_weight:
            self.head = nn.Linear(bag.bag.embedding_dim, data.distill_vectors.shape[1], bias=False)
            params += list(self.head.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)
        self.sources = np.unique(data.pair_source) if len(data.pair_source) else np.zeros(0)
        self.step_no = 0

    def _pair_batch(self) -> np.ndarray:
        d, n = self.data, self.cfg.pair_batch
        if self.cfg.one_source_per_batch and len(self.sources) > 1:
            # sources drawn in proportion to their size, so every pair is seen equally often
            counts = np.bincount(d.pair_source)
            src = self.rng.choice(len(counts), p=counts / counts.sum())
            pool = np.flatnonzero(d.pair_source == src)
            return self.rng.choice(pool, size=min(n, len(pool)), replace=False)
        return self.rng.choice(len(d.pair_query), size=min(n, len(d.pair_query)), replace=False)

    def losses(self) -> dict[str, torch.Tensor]:
        d, cfg, out = self.data, self.cfg, {}
        tau = cfg.temperature
        if len(d.pair_query) and cfg.pair_weight:
            idx = self._pair_batch()
            q = self.bag(take(d.texts, d.pair_query[idx]))
            p = self.bag(take(d.texts, d.pair_positive[idx]))
            neg = d.pair_negative[idx]
            neg = neg[neg >= 0]
            docs = torch.cat([p, self.bag(take(d.texts, neg))]) if len(neg) else p
            labels = torch.arange(len(idx))
            out["pairs"] = 0.5 * (
                F.cross_entropy(q @ docs.T / tau, labels) + F.cross_entropy(p @ q.T / tau, labels)
            )
        if self.head is not None:
            idx = self.rng.choice(
                len(d.distill_text), size=min(cfg.distill_batch, len(d.distill_text)), replace=False
            )
            s = self.bag(take(d.texts, d.distill_text[idx]))
            t = F.normalize(torch.from_numpy(d.distill_vectors[idx].astype(np.float32)), dim=-1)
            out["distill"] = similarity_mse(s, t) + teacher_infonce(self.head(s), t, tau)
        if len(d.scored_a) and cfg.scored_weight:
            idx = self.rng.choice(
                len(d.scored_a), size=min(cfg.scored_batch, len(d.scored_a)), replace=False
            )
            a = self.bag(take(d.texts, d.scored_a[idx]))
            b = self.bag(take(d.texts, d.scored_b[idx]))
            out["scored"] = cosent_loss(a, b, torch.from_numpy(d.scored_gold[idx]))
        return out

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        frac = min(1.0, (self.step_no + 1) / max(1, cfg.steps // 20))  # 5% linear warm-up
        decay = 0.5 * (1 + np.cos(np.pi * self.step_no / max(1, cfg.steps)))
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * frac * decay
        parts = self.losses()
        if not parts:
            raise ValueError("no loss to train: give pairs, distillation or scored pairs a weight")
        weights = {
            "pairs": cfg.pair_weight,
            "distill": cfg.distill_weight,
            "scored": cfg.scored_weight,
        }
        total = sum(weights[k] * v for k, v in parts.items())
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        self.step_no += 1
        return {k: float(v.detach()) for k, v in parts.items()}
