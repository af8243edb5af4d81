"""Train the embedding tower of a shipped (or trained) model for similarity.

    python scripts/train_embedder.py transformer --out runs/embed-transformer \
        --sts ../shared/data/stsb-train/sts-train.tsv --distill runs/distill --steps 3000

--distill DIR is the output of scripts/distill_texts.py (texts.jsonl + cached teacher shards;
only finished shards are used). Run the same command again to resume. STS-B dev is evaluated
along the way for monitoring (never trained on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import fastlm
from fastlm.embedding.corpus import cloze_pairs
from fastlm.embedding.data import load_sts_pairs, read_sts_tsv
from fastlm.embedding.metrics import spearman
from fastlm.embedding.teacher import SHARD
from fastlm.embedding.trainer import (
    ClozeSet,
    DistillSet,
    EmbedTrainConfig,
    TowerTrainer,
    embed_texts,
)
from fastlm.models.embedder import new_tower

MAX_TOKENS = 256  # the trained window


def load_distill(d: Path, tokenizer, teacher: str) -> DistillSet:
    texts = [json.loads(line) for line in (d / "texts.jsonl").open(encoding="utf-8")]
    shards = sorted((d / f"teacher-{teacher}").glob("shard-*.npy"))
    vecs, ids = [], []
    for i, path in enumerate(shards):
        if not path.name.startswith(f"shard-{i:05d}-"):
            break  # only a contiguous prefix of finished shards
        vecs.append(np.load(path))
    n = sum(len(v) for v in vecs)
    ids = [s[:MAX_TOKENS] for s in tokenizer.encode_many(texts[:n])]
    keep = [i for i, s in enumerate(ids) if s]
    print(f"distill: {n} texts with teacher vectors ({len(vecs)} shards of {SHARD})")
    return DistillSet([ids[i] for i in keep], np.concatenate(vecs)[keep])


def sts_evaluator(path: Path, tokenizer):
    s1, s2, gold = read_sts_tsv(path)
    a, b = tokenizer.encode_many(s1), tokenizer.encode_many(s2)

    def evaluate(tower) -> dict:
        u, v = embed_texts(tower, a), embed_texts(tower, b)
        return {"stsb_dev": round(100 * spearman((u * v).sum(1), gold), 2)}

    return evaluate


def ict_evaluator(directory: Path, tokenizer):
    """nDCG@10 on a BEIR-layout retrieval set (scripts/make_ict_retrieval.py)."""
    from fastlm.embedding.evaluate import read_beir
    from fastlm.embedding.metrics import ndcg_at_k, top_k_ids

    corpus, queries, qrels = read_beir(directory)
    doc_ids, qids = list(corpus), [q for q in queries if q in qrels]
    docs = [s[:MAX_TOKENS] for s in tokenizer.encode_many([corpus[d] for d in doc_ids])]
    qs = [s[:MAX_TOKENS] for s in tokenizer.encode_many([queries[q] for q in qids])]

    def evaluate(tower) -> dict:
        d, q = embed_texts(tower, docs), embed_texts(tower, qs)
        ranked = top_k_ids(q @ d.T, doc_ids, 10)
        ndcg = [ndcg_at_k(r, qrels[qid], 10) for r, qid in zip(ranked, qids)]
        return {"ict_ndcg10": round(100 * float(np.mean(ndcg)), 2)}

    return evaluate


def branch_scales(lm, token_weight: float, n: int = 512) -> tuple[float, float]:
    """Initial projection scales (1/|states mean|, w/|token mean|), norms averaged over the first
    n STS-B train sentences, so the tower starts as a balanced mix of the two branches."""
    from fastlm.models.layers import mean_pool
    from fastlm.tokenizer import pad_batch

    s1, _, _ = read_sts_tsv(Path("../shared/data/stsb-train/sts-train.tsv"))
    b = pad_batch([s[:MAX_TOKENS] for s in lm.tokenizer.encode_many(s1[:n])])
    ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
    net = lm.backend.model
    with torch.no_grad():
        out = net.hidden_states(ids)
        states = mean_pool(out[0] if isinstance(out, tuple) else out, mask)
        tokens = mean_pool(net.embedding(ids), mask)
    n_states, n_tokens = states.norm(dim=1).mean().item(), tokens.norm(dim=1).mean().item()
    return 1.0 / n_states, token_weight / n_tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sts", type=Path)
    p.add_argument("--distill", type=Path)
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
    p.add_argument("--dev", type=Path, default=Path("../shared/data/stsb-dev/sts-dev.tsv"))
    p.add_argument("--ict", type=Path, help="BEIR-layout retrieval set to monitor")
    p.add_argument("--cloze", type=int, default=0, help="inverse-cloze pairs from --cloze-data")
    p.add_argument("--cloze-max-tokens", type=int, default=128, help="cut cloze contexts here")
    p.add_argument(
        "--cloze-data",
        type=Path,
        nargs="+",
        default=sorted(Path("../shared/data/gutenberg_en").glob("train-*.txt")),
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--token-weight", type=float, default=2.0, help="initial lexical share")
    for f, v in EmbedTrainConfig().__dict__.items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EmbedTrainConfig(**{f: getattr(args, f) for f in EmbedTrainConfig().__dict__})
    lm = fastlm.load(args.model, backend="eager")
    tok = lm.tokenizer
    tower = new_tower(lm.backend.model, scales=branch_scales(lm, args.token_weight))
    pairs = load_sts_pairs(args.sts, tok, MAX_TOKENS) if args.sts else None
    distill = load_distill(args.distill, tok, args.teacher) if args.distill else None
    monitors = [sts_evaluator(args.dev, tok)] if args.dev.exists() else []
    if args.ict:
        monitors.append(ict_evaluator(args.ict, tok))

    def evaluate(tower) -> dict:
        return {k: v for m in monitors for k, v in m(tower).items()}

    cloze = None
    if args.cloze:
        q, c = cloze_pairs(args.cloze_data, args.cloze, seed=cfg.seed)
        cut = min(args.cloze_max_tokens, MAX_TOKENS)
        cloze = ClozeSet(
            [s[:cut] for s in tok.encode_many(q)], [s[:cut] for s in tok.encode_many(c)]
        )
        print(f"cloze: {len(q)} pairs")
    trainer = TowerTrainer(tower, cfg, pairs, distill, args.out, evaluate, cloze)
    if trainer.resume():
        print(f"resumed at step {trainer.step}")
    elif evaluate:
        print(json.dumps({"step": 0, **evaluate(tower)}))
    trainer.train()


if __name__ == "__main__":
    main()
