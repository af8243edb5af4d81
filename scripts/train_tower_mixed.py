"""Train the whole embedding tower (encoder and projection) for the mixed embedding.

    python scripts/train_tower_mixed.py transformer --out runs/mixed-transformer \
        --nli ../shared/data/train-corpora/nli_newprotocols_train/triples.tsv \
              ../shared/data/pairs/snli_tok/triples.tsv \
        --sts ../shared/data/stsb-train/sts-train.tsv --sick ../shared/data/pairs/sick/pairs.tsv \
        --pairs ../shared/data/train-corpora/*/*.tsv \
        --dev-sts ../shared/data/stsb-dev/sts-dev.tsv \
        --dev-retrieval ../shared/data/retrieval-dev/arxiv-title-abstract \
                        ../shared/data/retrieval-dev/nq-wikipedia

`embed()` is normalize(unit(tower(t)) + w * unit(branch(t))). The lexical branch is the model's
shipped one, frozen (its vectors of every training text are computed once); the tower and w
train on that mixed vector, so the tower learns what the branch misses instead of repeating it:
- NLI triples (anchor, entailment, contradiction): InfoNCE over the batch's positives and hard
  negatives (the sentence-similarity ingredient that composes meaning);
- CoSENT on STS-B train + SICK train scored pairs;
- weak query -> document pairs (one file per step, drawn by size): InfoNCE both ways, each
  query also against the batch's hard negatives (the file's own, or with --mine-negatives its
  best BM25 hit among the file's other documents: where the branch alone is fooled), which
  keeps the mixed vector ranking documents; with --pair-chunk C the batch is embedded C texts at
  a time (GradCache, fastlm/embedding/contrastive.py), so --pair-batch 1024 fits;
- with --distill DIR (scripts/distill_texts.py's output: texts.jsonl and the teacher's cached
  vectors), distillation: the in-batch cosine matrix of --distill-batch texts' mixed vectors
  matched to the teacher's (MSE), over every text whose teacher vector is cached.
With --query-weight Q the weak pairs' queries are mixed with the fixed weight Q instead of w, as
`embed(kind="query")` mixes them, and the dev retrieval queries are embedded so; --init-tower
starts from a trained tower (e.g. a step of an earlier run) instead of the model's own, and
--init-tokens teacher replaces its token table by the teacher's (fastlm/embedding/token_init.py).
Every training text that also occurs in a dev set (after the branch's normalisation) is dropped.
Dev figures (`DevSets`, the figures of `fastlm evaluate`) are logged every --eval-every steps
through the engine's own `embed()` with the tower and w at that step; the tower and w of each
evaluation are kept (`step-N/`), and `best.json` names the best mean. Run the same command
again to resume from the last evaluation.
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
from safetensors.torch import load_file, save_file

import fastlm
from fastlm.char_ngrams import LexicalBranch, normalize_text
from fastlm.embedding.contrastive import cached_pair_infonce, pair_infonce
from fastlm.embedding.data import read_sick, read_sts_tsv
from fastlm.embedding.evaluate import DevSets
from fastlm.embedding.lexical_training import TextTable
from fastlm.embedding.losses import cosent_loss, similarity_mse
from fastlm.embedding.pairs import read_pairs_tsv, training_pairs
from fastlm.embedding.teacher import cached_prefix
from fastlm.embedding.token_init import init_tower_tokens
from fastlm.tokenizer import pad_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lexical", type=Path, help="the branch (default: the model's shipped one)")
    p.add_argument("--nli", type=Path, nargs="*", default=[])
    p.add_argument("--sts", type=Path)
    p.add_argument("--sick", type=Path)
    p.add_argument("--pairs", type=Path, nargs="*", default=[])
    p.add_argument("--dev-sts", type=Path, nargs="*", default=[])
    p.add_argument("--dev-retrieval", type=Path, nargs="*", default=[])
    p.add_argument("--max-tokens", type=int, default=128, help="cut training texts here")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--proj-lr", type=float, default=1e-3)
    p.add_argument("--nli-batch", type=int, default=64)
    p.add_argument("--scored-batch", type=int, default=64)
    p.add_argument("--pair-batch", type=int, default=64)
    p.add_argument(
        "--pair-chunk",
        type=int,
        default=0,
        help="embed the pairs' batch this many texts at a time (GradCache; 0: all at once)",
    )
    p.add_argument("--nli-weight", type=float, default=1.0)
    p.add_argument("--scored-weight", type=float, default=1.0)
    p.add_argument("--pair-weight", type=float, default=1.0)
    p.add_argument("--mine-negatives", type=int, default=0, help="BM25 depth (0: none mined)")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--weight", type=float, help="start w here (default: the branch's)")
    p.add_argument("--fixed-weight", action="store_true", help="keep w fixed")
    p.add_argument(
        "--query-weight",
        type=float,
        help="mix the weak pairs' queries with this fixed weight (embed(kind='query'))",
    )
    p.add_argument("--init-tower", type=Path, help="start from this embedder.safetensors")
    p.add_argument(
        "--init-tokens",
        choices=["tower", "teacher"],
        default="tower",
        help="the token table: the starting tower's, or the teacher's (model2vec-style)",
    )
    p.add_argument("--distill", type=Path, help="texts.jsonl + teacher-<name>/ (distill_texts.py)")
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
    p.add_argument("--teacher-max-tokens", type=int, help="the cache's --max-tokens")
    p.add_argument("--distill-batch", type=int, default=128)
    p.add_argument("--distill-weight", type=float, default=10.0, help="the MSE is ~1e-2 in size")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # the eager engine's tower is the one trained: evaluations run the engine's own embed()
    model = fastlm.load(args.model, backend="eager", threads=args.threads)
    tower, tok = model.backend.embedder, model.tokenizer
    if args.init_tower:
        tower.load_state_dict(load_file(str(args.init_tower)))
    if args.init_tokens == "teacher" and not (args.out / "state.pt").exists():
        print(f"token table: {init_tower_tokens(tower, tok, args.teacher)} rows from the teacher")
    branch = LexicalBranch.load(args.lexical) if args.lexical else model.backend.lexical
    if branch is None:
        raise SystemExit(f"{args.model} has no lexical branch: give --lexical")

    dev = DevSets(args.dev_sts, args.sick, args.dev_retrieval)
    dev_norm = {normalize_text(t) for t in dev.texts()}
    fresh = lambda *ts: all(normalize_text(t) not in dev_norm for t in ts)  # noqa: E731
    texts, dropped = TextTable(), 0

    triples = []
    for f in args.nli:
        ps = read_pairs_tsv(f)
        rows = [r for r in zip(ps.queries, ps.positives, ps.negatives) if r[2] is not None]
        keep = [r for r in rows if fresh(*r)]
        dropped += len(rows) - len(keep)
        triples += keep
    na, npos, nneg = (texts.ids(col) for col in zip(*triples)) if triples else ([],) * 3
    sa, sb, sg = [], [], []
    for s1, s2, g in ([read_sts_tsv(args.sts)] if args.sts else []) + (
        [read_sick(args.sick, "train")] if args.sick else []
    ):
        for x, y, z in zip(s1, s2, g):
            if fresh(x, y):
                sa.append(x), sb.append(y), sg.append(z)
            else:
                dropped += 1
    sa, sb, sg = texts.ids(sa), texts.ids(sb), torch.tensor(sg, dtype=torch.float32)
    files, mined = [], 0
    for f in args.pairs:
        ps, n_dropped, n_mined = training_pairs(f, fresh, args.mine_negatives)
        dropped, mined = dropped + n_dropped, mined + n_mined
        has = np.array([n is not None for n in ps.negatives], dtype=bool)
        neg = np.full(len(ps), -1, np.int64)
        if has.any():
            neg[has] = texts.ids([ps.negatives[i] for i in np.flatnonzero(has)])
        files.append((texts.ids(ps.queries), texts.ids(ps.positives), neg))
    sizes = np.array([len(q) for q, _, _ in files], np.float64)
    distilled, teacher = np.zeros(0, np.int64), None
    if args.distill:
        with open(args.distill / "texts.jsonl", encoding="utf-8") as f:
            all_texts = [json.loads(line) for line in f]
        cache = args.distill / f"teacher-{args.teacher}"
        vecs = cached_prefix(all_texts, cache, args.teacher, args.teacher_max_tokens)
        keep = [i for i in range(len(vecs)) if fresh(all_texts[i])]
        dropped += len(vecs) - len(keep)
        distilled = texts.ids([all_texts[i] for i in keep])
        teacher = torch.from_numpy(vecs[keep].astype(np.float32))
    t0 = time.time()
    order = list(texts.rows)
    tokens = [s[: args.max_tokens] for s in tok.encode_many(order)]
    lexical = torch.from_numpy(branch.vectors(order))  # (n, dim) unit rows, frozen
    facts = {
        "texts": len(order),
        "nli": len(na),
        "scored": len(sa),
        "pairs": int(sizes.sum()),
        "distilled": len(distilled),
        "mined_negatives": mined,
        "dropped_dev_overlap": dropped,
        "prepare_s": round(time.time() - t0, 1),
    }
    print(json.dumps(facts), flush=True)

    start_w = args.weight if args.weight is not None else branch.weight
    log_w = torch.nn.Parameter(torch.tensor(math.log(max(start_w, 1e-3))))
    groups = [
        {"params": list(tower.encoder.parameters()), "lr": args.lr},
        {"params": list(tower.proj.parameters()), "lr": args.proj_lr},
    ]
    if not args.fixed_weight:
        groups.append({"params": [log_w], "lr": args.proj_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    step = 0
    state_file = args.out / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, weights_only=False)
        tower.load_state_dict(state["tower"])
        opt.load_state_dict(state["opt"])
        with torch.no_grad():
            log_w.copy_(state["log_w"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)

    def mixed(ids: np.ndarray, w: torch.Tensor | None = None) -> torch.Tensor:
        b = pad_batch([tokens[i] for i in ids])
        t = tower(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
        w = log_w.exp() if w is None else w
        return F.normalize(F.normalize(t, dim=-1) + w * lexical[ids], dim=-1)

    query_w = None if args.query_weight is None else torch.tensor(args.query_weight)

    def nli_infonce(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Anchors q (B, D) against d (B', D), B' >= B: row i's positive is d[i]."""
        return F.cross_entropy(q @ d.T / args.temperature, torch.arange(len(q)))

    def evaluate() -> dict:
        """Every dev figure of `model.embed` with the tower and w as they are now."""
        w = float(log_w.detach().exp())
        model.backend.lexical = LexicalBranch(branch.table, w, branch.sizes, args.query_weight)
        tower.eval()
        figures = dev.figures(model)
        tower.train()
        return figures

    log = (args.out / "log.jsonl").open("a", encoding="utf-8")
    if step == 0:
        log.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **facts}) + "\n")
        row = {"step": 0, "w": round(start_w, 3), **evaluate()}
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()
    best_file = args.out / "best.json"
    best = json.loads(best_file.read_text())["mean"] if best_file.exists() else -1.0
    tower.train()
    t_last = time.time()
    while step < args.steps:
        step += 1
        frac = step / args.steps
        scale = min(1.0, step / max(1, args.steps // 20)) * 0.5 * (1 + math.cos(math.pi * frac))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        parts = {}
        if len(na) and args.nli_weight:
            b = rng.choice(len(na), args.nli_batch, replace=False)
            q = mixed(na[b])
            d = mixed(np.concatenate([npos[b], nneg[b]]))
            parts["nli"] = args.nli_weight * nli_infonce(q, d)
        if len(sa) and args.scored_weight:
            b = rng.choice(len(sa), args.scored_batch, replace=False)
            parts["scored"] = args.scored_weight * cosent_loss(mixed(sa[b]), mixed(sb[b]), sg[b])
        pair_batch = None
        if files and args.pair_weight:
            q_ids, d_ids, n_ids = files[rng.choice(len(files), p=sizes / sizes.sum())]
            b = rng.choice(len(q_ids), min(args.pair_batch, len(q_ids)), replace=False)
            hard = n_ids[b][n_ids[b] >= 0]  # each query also meets the batch's hard negatives
            if args.pair_chunk:  # back-propagated below, chunk by chunk
                pair_batch = (q_ids[b], d_ids[b], hard)
            else:
                docs = mixed(np.concatenate([d_ids[b], hard]))  # one padded batch
                parts["pairs"] = args.pair_weight * pair_infonce(
                    mixed(q_ids[b], query_w),
                    docs[: len(b)],
                    args.temperature,
                    docs[len(b) :] if len(hard) else None,
                )
        if len(distilled) and args.distill_weight:
            b = rng.choice(len(distilled), args.distill_batch, replace=False)
            parts["distill"] = args.distill_weight * similarity_mse(mixed(distilled[b]), teacher[b])
        opt.zero_grad()
        if parts:
            sum(parts.values()).backward()
        if pair_batch is not None:
            value = cached_pair_infonce(
                mixed,
                *pair_batch,
                temperature=args.temperature,
                chunk=args.pair_chunk,
                weight=args.pair_weight,
                embed_queries=lambda ids: mixed(ids, query_w),
            )
            parts["pairs"] = torch.tensor(args.pair_weight * value)
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(
                json.dumps(
                    {
                        "step": step,
                        **{k: round(float(v.detach()), 4) for k, v in parts.items()},
                        "w": round(float(log_w.detach().exp()), 3),
                        "s_per_step": round((time.time() - t_last) / 50, 3),
                    }
                ),
                flush=True,
            )
            t_last = time.time()
        if step % args.eval_every == 0 or step == args.steps:
            row = {"step": step, "w": round(float(log_w.detach().exp()), 4), **evaluate()}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
            keep = args.out / f"step-{step}"
            keep.mkdir(exist_ok=True)
            save_file(tower.weights(), str(keep / "embedder.safetensors"))
            (keep / "figures.json").write_text(json.dumps(row))
            if row["mean"] > best:
                best = row["mean"]
                best_file.write_text(json.dumps(row))
            tmp = state_file.with_suffix(".tmp")
            torch.save(
                {
                    "tower": tower.state_dict(),
                    "opt": opt.state_dict(),
                    "log_w": log_w.detach(),
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                },
                tmp,
            )
            tmp.replace(state_file)


if __name__ == "__main__":
    main()
