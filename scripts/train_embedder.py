"""Train the embedding tower of a shipped (or trained) model for similarity.

    python scripts/train_embedder.py transformer --out runs/embed-transformer \
        --sts ../shared/data/stsb-train/sts-train.tsv --distill runs/distill --steps 3000

    python scripts/train_embedder.py transformer --out runs/rank-transformer \
        --sts ../shared/data/stsb-train/sts-train.tsv --sick ../shared/data/pairs/sick/pairs.tsv \
        --distill runs/distill-wide --pairs ../shared/data/train-corpora/*/*.tsv \
        --ict ../shared/data/retrieval-dev/nq-wikipedia --cloze-batch 512 --steps 2000

--distill DIR is the output of scripts/distill_texts.py (texts.jsonl + cached teacher shards;
only finished shards are used). --pairs takes weak query -> document files (with an optional
hard-negative column, see fastlm/embedding/pairs.py) and trains them with in-batch InfoNCE over
`--cloze-batch` pairs a step. --sick adds SICK *train* rows to the CoSENT pairs (its trial rows
are a dev set: evaluated with --sick-dev, never trained on). Run the same command again to
resume. STS-B dev is evaluated along the way for monitoring (never trained on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import fastlm
from fastlm.embedding.corpus import cloze_pairs
from fastlm.embedding.data import StsPairs, load_sts_pairs, read_sts_tsv
from fastlm.embedding.evaluate import evaluate_retrieval, evaluate_sts
from fastlm.embedding.pairs import read_pair_files
from fastlm.embedding.teacher import SHARD
from fastlm.embedding.token_init import init_tower_tokens
from fastlm.embedding.trainer import (
    ClozeSet,
    DistillSet,
    EmbedTrainConfig,
    TowerEmbedder,
    TowerTrainer,
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


def sick_split(path: Path, split: str, out_dir: Path) -> Path:
    """SICK rows of one split (train or trial) as an STS-style TSV under out_dir."""
    out = out_dir / f"sick-{split}.tsv"
    rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")]
    col = rows[0].index("split")
    keep = [r[:3] for r in rows[1:] if r[col] == split]
    out.write_text(
        "sentence1\tsentence2\tscore\n" + "".join("\t".join(r) + "\n" for r in keep),
        encoding="utf-8",
    )
    return out


def monitor(tokenizer, sts_sets: dict[str, Path], retrieval_sets: dict[str, Path]):
    """tower -> {name: Spearman or nDCG@10}: the same evaluation `fastlm evaluate` runs, on
    every dev set given (STS-style files and BEIR-layout directories)."""

    def evaluate(tower) -> dict:
        model = TowerEmbedder(tower, tokenizer, MAX_TOKENS)
        out = {name: round(evaluate_sts(model, p)["spearman"], 2) for name, p in sts_sets.items()}
        for name, d in retrieval_sets.items():
            out[name] = round(evaluate_retrieval(model, d)["ndcg@10"], 2)
        return out

    return evaluate


def weak_pairs(files: list[Path], tokenizer, cut: int) -> ClozeSet:
    pairs = read_pair_files(files)
    tokens = lambda texts: [s[:cut] for s in tokenizer.encode_many(texts)]  # noqa: E731
    negatives = tokens([n or "" for n in pairs.negatives])
    print(
        f"pairs: {len(pairs)} from {len(files)} files ({pairs.skipped_empty} empty rows skipped, "
        f"{sum(1 for n in negatives if n)} with a hard negative)"
    )
    return ClozeSet(tokens(pairs.queries), tokens(pairs.positives), negatives)


def merged(a: StsPairs | None, b: StsPairs) -> StsPairs:
    if a is None:
        return b
    return StsPairs(a.left + b.left, a.right + b.right, np.concatenate([a.gold, b.gold]))


def branch_scales(lm, token_weight: float, n: int = 512) -> tuple[float, float]:
    """Initial projection scales (1/|states mean|, w/|token mean|), norms averaged over the first
    n STS-B train sentences, so the tower starts as a balanced mix of the two branches."""
    from fastlm.models.embedder import EmbeddingTower
    from fastlm.models.layers import mean_pool
    from fastlm.tokenizer import pad_batch

    s1, _, _ = read_sts_tsv(Path("../shared/data/stsb-train/sts-train.tsv"))
    b = pad_batch([s[:MAX_TOKENS] for s in lm.tokenizer.encode_many(s1[:n])])
    ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
    net = lm.backend.model
    with torch.no_grad():
        states = EmbeddingTower(net)(ids, mask)  # the LM's own mean of top-layer states
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
    p.add_argument("--ict", type=Path, nargs="*", default=[], help="BEIR-layout sets to monitor")
    p.add_argument("--sick", type=Path, help="SICK pairs.tsv: train rows trained, trial monitored")
    p.add_argument("--pairs", type=Path, nargs="*", default=[], help="weak pair TSV files")
    p.add_argument("--pairs-max-tokens", type=int, default=128, help="cut pair texts here")
    p.add_argument("--init-tokens", choices=["lm", "teacher"], default="lm")
    p.add_argument("--skip-start-eval", action="store_true", help="no evaluation at step 0")
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
    if args.init_tokens == "teacher":
        replaced = init_tower_tokens(tower, tok, args.teacher)
        print(f"token table: {replaced} rows from the teacher")
    pairs = load_sts_pairs(args.sts, tok, MAX_TOKENS) if args.sts else None
    sts_sets = {"stsb_dev": args.dev} if args.dev.exists() else {}
    if args.sick:
        args.out.mkdir(parents=True, exist_ok=True)
        pairs = merged(pairs, load_sts_pairs(sick_split(args.sick, "train", args.out), tok, 256))
        sts_sets["sick_trial"] = sick_split(args.sick, "trial", args.out)
    distill = load_distill(args.distill, tok, args.teacher) if args.distill else None
    retrieval_sets = {f"{d.name}_ndcg10": d for d in args.ict}
    evaluate = monitor(tok, sts_sets, retrieval_sets) if sts_sets or retrieval_sets else None
    cloze = weak_pairs(args.pairs, tok, args.pairs_max_tokens) if args.pairs else None
    if args.cloze and cloze is None:
        q, c = cloze_pairs(args.cloze_data, args.cloze, seed=cfg.seed)
        cut = min(args.cloze_max_tokens, MAX_TOKENS)
        cloze = ClozeSet(
            [s[:cut] for s in tok.encode_many(q)], [s[:cut] for s in tok.encode_many(c)]
        )
        print(f"cloze: {len(q)} pairs")
    trainer = TowerTrainer(tower, cfg, pairs, distill, args.out, evaluate, cloze)
    if trainer.resume():
        print(f"resumed at step {trainer.step}")
    elif evaluate and not args.skip_start_eval:
        print(json.dumps({"step": 0, **evaluate(tower)}))
    trainer.train()


if __name__ == "__main__":
    main()
