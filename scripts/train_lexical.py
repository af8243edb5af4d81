"""Train the table of the embedding's lexical branch (hashed character n-grams,
fastlm/char_ngrams.py) for ranking.

    python scripts/train_lexical.py --out runs/lexical \
        --pairs ../shared/data/train-corpora/*/*.tsv --distill runs/distill-wide \
        --sts ../shared/data/stsb-train/sts-train.tsv --sick ../shared/data/pairs/sick/pairs.tsv \
        --dev-sts ../shared/data/stsb-dev/sts-dev.tsv \
        --dev-retrieval ../shared/data/retrieval-dev/arxiv-title-abstract \
                        ../shared/data/retrieval-dev/nq-wikipedia

Every training text that also occurs in a dev set (after the branch's own normalisation) is
dropped before training, and the count is printed. --distill uses the finished prefix of the
teacher cache written by scripts/distill_texts.py. Writes `lexical.safetensors` (the table in
the shipped int8 form, weight 1) and `log.jsonl` (losses, dev figures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastlm.char_ngrams import LEXICAL_FILE, LexicalBranch, count_ngrams, normalize_text, project
from fastlm.embedding.data import read_sick, read_sts_tsv
from fastlm.embedding.evaluate import DevSets
from fastlm.embedding.lexical_training import (
    LexicalConfig,
    LexicalData,
    LexicalTrainer,
    NgramBag,
    TextTable,
    idf_scaled_table,
)
from fastlm.embedding.pairs import mine_negatives, read_pairs_tsv
from fastlm.embedding.teacher import cached_prefix


class LexicalEmbedder:
    """`embed(texts)` of a table alone, for the dev figures (counts kept across calls)."""

    counted: dict[tuple[str, ...], object] = {}

    def __init__(self, table: np.ndarray):
        self.table = table

    def embed(self, texts, batch_size=64, **_):
        key = (len(self.table), *texts)
        if key not in self.counted:
            self.counted[key] = count_ngrams(texts, len(self.table))
        v = project(self.counted[key], self.table)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def evaluate(table: np.ndarray, dev: DevSets) -> dict:
    return dev.figures(LexicalEmbedder(table))


def build_data(args, dev_texts: set[str]) -> tuple[LexicalData, dict]:
    table = TextTable()
    fresh = lambda texts: [normalize_text(t) not in dev_texts for t in texts]  # noqa: E731
    stats = {"dropped_dev_overlap": 0}
    q_ids, p_ids, n_ids, src = [], [], [], []
    for k, path in enumerate(args.pairs):
        ps = read_pairs_tsv(path)
        ok = np.array(fresh(ps.queries)) & np.array(fresh(ps.positives))
        stats["dropped_dev_overlap"] += int((~ok).sum())
        keep = np.flatnonzero(ok)
        q_ids.append(table.ids([ps.queries[i] for i in keep]))
        p_ids.append(table.ids([ps.positives[i] for i in keep]))
        negs = [ps.negatives[i] for i in keep]
        if args.mine_negatives and all(n is None for n in negs):
            t = time.time()
            negs = mine_negatives(
                [ps.queries[i] for i in keep], [ps.positives[i] for i in keep], args.mine_negatives
            )
            stats[f"mined:{path}"] = [sum(n is not None for n in negs), round(time.time() - t)]
        has = np.array([n is not None for n in negs], dtype=bool)
        n = np.full(len(keep), -1, np.int64)
        if has.any():
            n[has] = table.ids([negs[i] for i in np.flatnonzero(has)])
        n_ids.append(n)
        src.append(np.full(len(keep), k, np.int64))
        stats[f"pairs:{path}"] = len(keep)
    data_kw = {}
    if q_ids:
        data_kw.update(
            pair_query=np.concatenate(q_ids),
            pair_positive=np.concatenate(p_ids),
            pair_negative=np.concatenate(n_ids),
            pair_source=np.concatenate(src),
        )
    if args.distill:
        texts = [json.loads(x) for x in (args.distill / "texts.jsonl").open(encoding="utf-8")]
        vecs = cached_prefix(texts, args.distill / f"teacher-{args.teacher}", args.teacher)
        if args.distill_max:
            vecs = vecs[: args.distill_max]
        texts = texts[: len(vecs)]
        ok = np.flatnonzero(fresh(texts))
        stats["dropped_dev_overlap"] += len(texts) - len(ok)
        data_kw.update(distill_text=table.ids([texts[i] for i in ok]), distill_vectors=vecs[ok])
        stats["distill_texts"] = len(ok)
    a, b, g = [], [], []
    if args.sts:
        s1, s2, gold = read_sts_tsv(args.sts)
        a += s1
        b += s2
        g += list(gold)  # noqa: E702
    if args.sick:
        s1, s2, gold = read_sick(args.sick, "train")
        a += s1
        b += s2
        g += list(gold)  # noqa: E702
    if a:
        data_kw.update(
            scored_a=table.ids(a), scored_b=table.ids(b), scored_gold=np.asarray(g, np.float32)
        )
        stats["scored_pairs"] = len(a)
    t = time.time()
    counts = table.count(args.buckets)
    stats["texts"] = len(counts)
    stats["count_s"] = round(time.time() - t, 1)
    return LexicalData(counts, **data_kw), stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--buckets", type=int, default=1 << 16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--pairs", type=Path, nargs="*", default=[])
    p.add_argument("--distill", type=Path)
    p.add_argument("--distill-max", type=int, default=0)
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
    p.add_argument(
        "--mine-negatives",
        type=int,
        default=0,
        metavar="DEPTH",
        help="BM25 hard negatives for pair files without any (0: none)",
    )
    p.add_argument("--sts", type=Path, help="scored pairs for CoSENT (STS-B train)")
    p.add_argument("--sick", type=Path, help="SICK pairs.tsv: train rows trained, trial dev")
    p.add_argument("--dev-sts", type=Path, nargs="*")
    p.add_argument("--dev-retrieval", type=Path, nargs="*")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    for f in LexicalConfig.__dataclass_fields__.values():
        kind = type(f.default)
        parse = (lambda s: s.lower() in ("1", "true", "yes")) if kind is bool else kind
        p.add_argument("--" + f.name.replace("_", "-"), type=parse, default=f.default)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = LexicalConfig(**{k: getattr(args, k) for k in LexicalConfig.__dataclass_fields__})
    args.out.mkdir(parents=True, exist_ok=True)
    dev = DevSets(args.dev_sts or [], args.sick, args.dev_retrieval or [])
    dev_texts = {normalize_text(t) for t in dev.texts()}
    data, stats = build_data(args, dev_texts)
    print(json.dumps(stats), flush=True)
    start = idf_scaled_table(data.texts, args.buckets, args.dim, cfg.seed)
    bag = NgramBag(start)
    trainer = LexicalTrainer(bag, data, cfg)
    log = (args.out / "log.jsonl").open("a", encoding="utf-8")
    log.write(json.dumps({"config": vars(cfg), "data": stats}) + "\n")
    first = {"step": 0, **evaluate(start, dev)}
    print(json.dumps(first), flush=True)
    log.write(json.dumps(first) + "\n")
    t0, totals = time.time(), {}
    for step in range(1, cfg.steps + 1):
        for k, v in trainer.step().items():
            totals[k] = totals.get(k, 0.0) + v
        if step % args.eval_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                "s": round(time.time() - t0, 1),
                **{k: round(v / args.eval_every, 4) for k, v in totals.items()},
                **evaluate(bag.table(), dev),
            }
            totals = {}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    # weight 1 until scripts/choose_lexical_weight.py picks the shipped one
    LexicalBranch(bag.table(), 1.0).save(args.out / LEXICAL_FILE)


if __name__ == "__main__":
    main()
