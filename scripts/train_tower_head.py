"""Retrain the tower's projection (and the lexical branch's weight) for the mixed embedding.

    python scripts/train_tower_head.py transformer runs/lex/final/lexical.safetensors \
        --out runs/head-transformer --pairs ../shared/data/train-corpora/*/*.tsv \
        --distill runs/distill-wide --sts ../shared/data/stsb-train/sts-train.tsv \
        --sick ../shared/data/pairs/sick/pairs.tsv --dev-sts ../shared/data/stsb-dev/sts-dev.tsv \
        --dev-retrieval ../shared/data/retrieval-dev/arxiv-title-abstract \
                        ../shared/data/retrieval-dev/nq-wikipedia

`embed()` is normalize(unit(proj(features)) + w * unit(branch)), where `features` (B, C + E) are
the tower encoder's pooled means (frozen here) and `branch` the trained lexical branch (frozen).
The encoder's features of a sample of training texts are computed once, through the engine's
windows (the projection is affine, so projecting the windows' mean equals the mean of projected
windows); then only `proj` and w train, on the lexical trainer's losses (pairs InfoNCE,
distillation, CoSENT), which takes seconds a hundred steps. Writes `tower.safetensors` (the
tower with the new projection), `weight.json` (the learned w) and `log.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fastlm.batching import embed_windowed
from fastlm.char_ngrams import LexicalBranch, normalize_text
from fastlm.checkpoint import load_checkpoint
from fastlm.embedding.data import read_sick, read_sts_tsv
from fastlm.embedding.evaluate import DevSets, PrecomputedEmbedder
from fastlm.embedding.losses import cosent_loss, similarity_mse
from fastlm.embedding.pairs import read_pairs_tsv
from fastlm.embedding.teacher import cached_prefix
from fastlm.hub import resolve_checkpoint
from fastlm.models import architecture_of
from fastlm.models.layers import mean_pool


class Features:
    """Pre-projection features (n, C + E) of texts through the tower's encoder, by window."""

    def __init__(self, ckpt, threads: int):
        self.tower, self.tok = ckpt.embedder.eval(), ckpt.tokenizer
        facts = architecture_of(ckpt.config).facts(ckpt.config, ckpt.embedder.dim)
        self.window, self.threads = facts["embed_window"], threads
        self.width = self.tower.proj.in_features

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            states = mean_pool(self.tower.states(ids_t), mask_t)
            tokens = mean_pool(self.tower.encoder.embedding(ids_t), mask_t)
            return torch.cat([states, tokens], dim=1).numpy()

    def __call__(self, texts: list[str], max_tokens: int | None = None) -> np.ndarray:
        torch.set_num_threads(self.threads)
        seqs = self.tok.encode_many(texts)
        if max_tokens:
            seqs = [s[:max_tokens] for s in seqs]
        return embed_windowed(seqs, self.width, self._run, self.window, 64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("lexical", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pairs", type=Path, nargs="*", default=[])
    p.add_argument("--pairs-per-file", type=int, default=4000)
    p.add_argument("--distill", type=Path)
    p.add_argument("--distill-max", type=int, default=20000)
    p.add_argument("--sts", type=Path)
    p.add_argument("--sick", type=Path)
    p.add_argument("--dev-sts", type=Path, nargs="*", default=[])
    p.add_argument("--dev-retrieval", type=Path, nargs="*", default=[])
    p.add_argument("--max-tokens", type=int, default=256, help="cut training texts here")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pair-batch", type=int, default=1024)
    p.add_argument("--scored-batch", type=int, default=256)
    p.add_argument("--distill-batch", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pair-weight", type=float, default=1.0)
    p.add_argument("--scored-weight", type=float, default=1.0)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--weight", type=float, help="start w here (default: the branch file's)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    branch = LexicalBranch.load(args.lexical)
    feats = Features(ckpt, args.threads)

    # dev sets (never trained on: their texts are dropped from the training sample)
    dev = DevSets(args.dev_sts, args.sick, args.dev_retrieval)
    dev_list = dev.texts()
    dev_norm = {normalize_text(t) for t in dev_list}
    fresh = lambda t: normalize_text(t) not in dev_norm  # noqa: E731

    texts: dict[str, int] = {}
    ids = lambda xs: np.array([texts.setdefault(x, len(texts)) for x in xs], np.int64)  # noqa: E731
    pq, pp = [], []
    for path in args.pairs:
        ps = read_pairs_tsv(path)
        keep = [i for i in range(len(ps)) if fresh(ps.queries[i]) and fresh(ps.positives[i])]
        keep = rng.permutation(keep)[: args.pairs_per_file]
        pq.append(ids([ps.queries[i] for i in keep]))
        pp.append(ids([ps.positives[i] for i in keep]))
    pq, pp = (np.concatenate(pq), np.concatenate(pp)) if pq else (np.zeros(0, int),) * 2
    sa, sb, sg = [], [], []
    for s1, s2, g in ([read_sts_tsv(args.sts)] if args.sts else []) + (
        [read_sick(args.sick, "train")] if args.sick else []
    ):
        sa += list(s1)
        sb += list(s2)
        sg += list(g)
    sa, sb, sg = ids(sa), ids(sb), np.asarray(sg, np.float32)
    dt, dv = np.zeros(0, int), None
    if args.distill:
        all_texts = [json.loads(x) for x in (args.distill / "texts.jsonl").open(encoding="utf-8")]
        teacher = "all-MiniLM-L6-v2"
        vecs = cached_prefix(all_texts, args.distill / f"teacher-{teacher}", teacher)
        keep = [i for i in range(min(len(vecs), args.distill_max)) if fresh(all_texts[i])]
        dt, dv = ids([all_texts[i] for i in keep]), vecs[keep].astype(np.float32)
    order = list(texts)
    t0 = time.time()
    cache = args.out / "features.npz"  # the encoder is frozen: its features are reused
    if cache.exists() and np.load(cache)["n"].tolist() == [len(order), len(dev_list)]:
        saved = np.load(cache)
        train_np, dev_f = saved["train"], saved["dev"]
    else:
        train_np, dev_f = feats(order, args.max_tokens), feats(dev_list)
        np.savez(cache, train=train_np, dev=dev_f, n=np.array([len(order), len(dev_list)]))
    train_f = torch.from_numpy(train_np)
    train_l = torch.from_numpy(branch.vectors(order))
    dev_l = branch.vectors(dev_list)
    facts = {
        "texts": len(order),
        "pairs": len(pq),
        "scored": len(sa),
        "distill": len(dt),
        "features_s": round(time.time() - t0, 1),
    }
    print(json.dumps(facts), flush=True)

    proj = torch.nn.Linear(feats.width, branch.dim)
    proj.load_state_dict(ckpt.embedder.proj.state_dict())
    start_w = args.weight if args.weight is not None else branch.weight
    log_w = torch.nn.Parameter(torch.tensor(math.log(max(start_w, 1e-3))))
    opt = torch.optim.Adam([*proj.parameters(), log_w], lr=args.lr)

    def mixed(f, lex):
        return F.normalize(F.normalize(proj(f), dim=-1) + log_w.exp() * lex, dim=-1)

    def evaluate() -> dict:
        with torch.no_grad():
            vecs = mixed(torch.from_numpy(dev_f), torch.from_numpy(dev_l)).numpy()
        return dev.figures(PrecomputedEmbedder(dict(zip(dev_list, vecs))))

    log = (args.out / "log.jsonl").open("a", encoding="utf-8")
    log.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **facts}) + "\n")
    row = {"step": 0, "w": round(float(log_w.detach().exp()), 3), **evaluate()}
    print(json.dumps(row), flush=True)
    log.write(json.dumps(row) + "\n")
    tau = args.temperature
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        loss = torch.zeros(())
        if len(pq) and args.pair_weight:
            b = rng.choice(len(pq), min(args.pair_batch, len(pq)), replace=False)
            q, d = mixed(train_f[pq[b]], train_l[pq[b]]), mixed(train_f[pp[b]], train_l[pp[b]])
            labels = torch.arange(len(b))
            loss = loss + args.pair_weight * 0.5 * (
                F.cross_entropy(q @ d.T / tau, labels) + F.cross_entropy(d @ q.T / tau, labels)
            )
        if len(sa) and args.scored_weight:
            b = rng.choice(len(sa), min(args.scored_batch, len(sa)), replace=False)
            loss = loss + args.scored_weight * cosent_loss(
                mixed(train_f[sa[b]], train_l[sa[b]]),
                mixed(train_f[sb[b]], train_l[sb[b]]),
                torch.from_numpy(sg[b]),
            )
        if len(dt) and args.distill_weight:
            b = rng.choice(len(dt), min(args.distill_batch, len(dt)), replace=False)
            loss = loss + args.distill_weight * similarity_mse(
                mixed(train_f[dt[b]], train_l[dt[b]]), torch.from_numpy(dv[b])
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            row = {
                "step": step,
                "loss": round(float(loss), 4),
                "w": round(float(log_w.exp()), 3),
                **evaluate(),
            }
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    tower = ckpt.embedder
    with torch.no_grad():
        tower.proj.load_state_dict(proj.state_dict())
    save_file(tower.weights(), str(args.out / "tower.safetensors"))
    (args.out / "weight.json").write_text(json.dumps({"weight": float(log_w.exp())}))


if __name__ == "__main__":
    main()
