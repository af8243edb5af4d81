"""Train the query side of `embed(texts, kind="query")`: documents keep the shipped embedding.

    python scripts/train_query_map.py transformer --out runs/query-transformer \
        --pairs ../shared/data/train-corpora/*/*.tsv --mine-negatives 10 \
        --dev-sts ../shared/data/stsb-dev/sts-dev.tsv --sick ../shared/data/pairs/sick/pairs.tsv \
        --dev-retrieval ../shared/data/retrieval-dev/arxiv-title-abstract \
                        ../shared/data/retrieval-dev/nq-wikipedia

A document's embedding is the shipped `normalize(unit(tower) + w * unit(branch))`. A query's is
`normalize(M @ [unit(tower); unit(branch_q)])`, where M (dim, 2 dim) starts as [I, q I] (the
query embedding, q the branch's query weight) and `branch_q` is the branch with one learned
scale per n-gram slot (start 1: query-side term weights, what IDF is to BM25's query terms).
Both train on the weak query -> document pairs (InfoNCE over one file's batch, each query also
against the batch's BM25-mined hard negatives); every vector but the query's branch is computed
once. Rows that share a text with a dev set are dropped. Sentence-similarity dev sets compare
documents with documents, so only the retrieval dev figures move; they are logged every
--eval-every steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastlm
from fastlm.batching import l2_normalize
from fastlm.char_ngrams import count_ngrams, normalize_text
from fastlm.embedding.evaluate import DevSets, judged_queries, retrieval_metrics
from fastlm.embedding.lexical_training import TextTable, take
from fastlm.embedding.pairs import training_pairs


class QuerySide(torch.nn.Module):
    """Query embedding from the tower's unit vector and the query's n-gram counts."""

    def __init__(self, table: np.ndarray, weight: float, slot_scales: bool):
        super().__init__()
        dim = table.shape[1]
        self.register_buffer("table", torch.from_numpy(table))
        eye = torch.eye(dim)
        self.mix = torch.nn.Parameter(torch.cat([eye, weight * eye], dim=1))  # (dim, 2 dim)
        self.scale = torch.nn.Parameter(torch.ones(table.shape[0]), requires_grad=slot_scales)

    def forward(self, tower: torch.Tensor, counts) -> torch.Tensor:
        slots = torch.from_numpy(counts.slots)
        b = F.embedding_bag(
            slots,
            self.table,
            torch.from_numpy(counts.indptr[:-1]),
            mode="sum",
            per_sample_weights=torch.from_numpy(counts.weights) * self.scale[slots],
        )
        x = torch.cat([tower, F.normalize(b, dim=-1)], dim=1)
        return F.normalize(x @ self.mix.T, dim=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pairs", type=Path, nargs="+", required=True)
    p.add_argument("--dev-sts", type=Path, nargs="*", default=[])
    p.add_argument("--sick", type=Path)
    p.add_argument("--dev-retrieval", type=Path, nargs="+", required=True)
    p.add_argument("--mine-negatives", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=256, help="cut training documents here")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--decay", type=float, default=0.0, help="L2 pull of M towards its start")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--no-slot-scales", action="store_true")
    p.add_argument("--eval-every", type=int, default=250)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = fastlm.load(args.model)
    branch = model.backend.lexical
    dev = DevSets(args.dev_sts, args.sick, args.dev_retrieval)
    dev_norm = {normalize_text(t) for t in dev.texts()}
    fresh = lambda *ts: all(normalize_text(t) not in dev_norm for t in ts)  # noqa: E731

    texts, queries, files, dropped = TextTable(), TextTable(), [], 0
    for f in args.pairs:
        ps, n_dropped, _ = training_pairs(f, fresh, args.mine_negatives)
        dropped += n_dropped
        has = np.array([n is not None for n in ps.negatives], dtype=bool)
        neg = np.full(len(ps), -1, np.int64)
        if has.any():
            neg[has] = texts.ids([ps.negatives[i] for i in np.flatnonzero(has)])
        files.append((queries.ids(ps.queries), texts.ids(ps.positives), neg, f.parent.name))
    sizes = np.array([len(q) for q, *_ in files], np.float64)

    t0 = time.time()
    cache = args.out / "vectors.npz"
    q_texts, d_texts = list(queries.rows), list(texts.rows)
    if cache.exists():
        z = np.load(cache)
        q_tower, docs = z["q_tower"], z["docs"]
    else:
        lexical, model.backend.lexical = branch, None  # the tower's vectors alone
        q_tower = model.embed(q_texts, show_progress_bar=True)
        d_tower = model.embed(d_texts, max_length=args.max_tokens, show_progress_bar=True)
        model.backend.lexical = lexical
        seqs = model.tokenizer.encode_many(d_texts)
        cut = [model.tokenizer.decode(s[: args.max_tokens]) for s in seqs]  # what the tower read
        docs = l2_normalize(branch.mix_vectors(d_tower, branch.vectors(cut)))
        np.savez(cache, q_tower=q_tower, docs=docs)
    q_counts = count_ngrams(q_texts, branch.table.shape[0], branch.sizes)
    facts = {
        "queries": len(q_texts),
        "documents": len(d_texts),
        "pairs": int(sizes.sum()),
        "dropped_dev_overlap": dropped,
        "vectors_s": round(time.time() - t0, 1),
    }
    print(json.dumps(facts), flush=True)

    # dev: documents as shipped, queries as tower vectors + counts
    dev_sets = []
    for path in args.dev_retrieval:
        corpus, dq, qrels = dev.sets[path.name][1]
        qids = judged_queries(dq, qrels)
        doc_ids = list(corpus)
        d = model.embed([corpus[i] for i in doc_ids])
        lexical, model.backend.lexical = branch, None
        qt = model.embed([dq[q] for q in qids])
        model.backend.lexical = lexical
        qc = count_ngrams([dq[q] for q in qids], branch.table.shape[0], branch.sizes)
        dev_sets.append((path.name, qids, doc_ids, qrels, d, qt, qc))

    side = QuerySide(branch.table, branch.query_weight, not args.no_slot_scales)
    start_mix = side.mix.detach().clone()
    opt = torch.optim.Adam([p for p in side.parameters() if p.requires_grad], lr=args.lr)
    q_tower_t, docs_t = torch.from_numpy(q_tower), torch.from_numpy(docs)

    def evaluate(step: int) -> dict:
        row = {"step": step}
        with torch.no_grad():
            for name, qids, doc_ids, qrels, d, qt, qc in dev_sets:
                q = side(torch.from_numpy(qt), qc).numpy()
                fig = retrieval_metrics(lambda rows, q=q, d=d: q[rows] @ d.T, qids, doc_ids, qrels)
                row[name] = round(fig["ndcg@10"], 2)
        row["mean"] = round(float(np.mean([row[n] for n, *_ in dev_sets])), 2)
        s = side.scale.detach()
        row["scale_min_max"] = [round(float(s.min()), 3), round(float(s.max()), 3)]
        return row

    log = (args.out / "log.jsonl").open("a", encoding="utf-8")
    log.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **facts}) + "\n")
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            row = evaluate(step)
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
            torch.save(side.state_dict(), args.out / f"step-{step}.pt")
        if step == args.steps:
            break
        lr = args.lr * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        q_ids, d_ids, n_ids, _ = files[rng.choice(len(files), p=sizes / sizes.sum())]
        b = rng.choice(len(q_ids), min(args.batch, len(q_ids)), replace=False)
        hard = n_ids[b][n_ids[b] >= 0]
        d = docs_t[np.concatenate([d_ids[b], hard])]
        q = side(q_tower_t[q_ids[b]], take(q_counts, q_ids[b]))
        loss = F.cross_entropy(q @ d.T / args.temperature, torch.arange(len(b)))
        if args.decay:
            loss = loss + args.decay * (side.mix - start_mix).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            side.scale.clamp_(min=0.0)


if __name__ == "__main__":
    main()
