"""Choose the weight of the lexical branch in `embed()` on every dev set together.

    python scripts/choose_lexical_weight.py transformer runs/lexical/lexical.safetensors \
        --dev-sts ../shared/data/stsb-dev/sts-dev.tsv --sick ../shared/data/pairs/sick/pairs.tsv \
        --dev-retrieval ../shared/data/retrieval-dev/arxiv-title-abstract \
                        ../shared/data/retrieval-dev/nq-wikipedia --out runs/lexical/weights.json

The tower's vectors of every dev text are computed once (the model as loaded, or with --tower the
embedder.safetensors of a training run in its place, its lexical branch switched off); for each
weight w the embedding is normalize(tower + w * branch) over unit rows, exactly
`LexicalBranch.mix`. Prints one row per weight (every dev figure and their mean) and writes them
with the weight of the best mean.

With --query-weights, every (document weight w, query weight q) pair is tried: retrieval queries
are mixed with q (`embed(kind="query")`), everything else with w. --keep-ranking R then keeps
only the pairs whose retrieval figures each stay within R points of --reference (a JSON object
of figures, e.g. the shipped embedding's), and --floor only those at or above its minimums (the
dev targets the shipped embedding met), before the best mean is taken (ties: the smaller loss
against --reference): the rule the shipped weights were chosen by (R = 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

import fastlm
from fastlm.batching import l2_normalize
from fastlm.char_ngrams import LexicalBranch
from fastlm.embedding.evaluate import DevSets, PrecomputedEmbedder
from fastlm.models import build_model
from fastlm.models.embedder import tower_from_weights

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 1e6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("lexical", type=Path)
    p.add_argument("--dev-sts", type=Path, nargs="*", default=[])
    p.add_argument("--sick", type=Path)
    p.add_argument("--dev-retrieval", type=Path, nargs="*", default=[])
    p.add_argument("--weights", type=float, nargs="*", default=list(WEIGHTS))
    p.add_argument("--tower", type=Path, help="embedder.safetensors to use instead of the model's")
    p.add_argument("--tower-cache", type=Path, help="npz of the tower's dev vectors (reused)")
    p.add_argument("--query-weights", type=float, nargs="*", help="also a query weight each")
    p.add_argument("--keep-ranking", type=float, help="retrieval within this of --reference")
    p.add_argument("--reference", type=json.loads, default={}, help='{"nq-wikipedia": 77.8, ...}')
    p.add_argument("--floor", type=json.loads, default={}, help='minimums: {"stsb-dev": 78}')
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    dev = DevSets(args.dev_sts, args.sick, args.dev_retrieval)
    texts = dev.texts()
    if args.tower_cache and args.tower_cache.exists():
        tower = np.load(args.tower_cache)["tower"]
    else:
        model = fastlm.load(args.model, backend="eager", threads=args.threads)
        model.backend.lexical = None  # the tower alone
        if args.tower:
            model.backend.embedder = tower_from_weights(
                build_model(model.config), load_file(str(args.tower))
            )
        tower = model.embed(texts, show_progress_bar=False)
        if args.tower_cache:
            np.savez(args.tower_cache, tower=tower)
    branch = LexicalBranch.load(args.lexical).vectors(texts)
    rows = []
    for w in args.weights:
        mixed = l2_normalize(tower + w * branch)
        for q in args.query_weights or [None]:
            queries = None if q is None else dict(zip(texts, l2_normalize(tower + q * branch)))
            model = PrecomputedEmbedder(dict(zip(texts, mixed)), queries)
            row = {"weight": w, **({} if q is None else {"query_weight": q}), **dev.figures(model)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.keep_ranking is not None:
        rows = [
            r
            for r in rows
            if all(r[k] >= v - args.keep_ranking for k, v in args.reference.items() if k in r)
        ]
    rows = [r for r in rows if all(r[k] >= v for k, v in args.floor.items())]
    if not rows:
        raise SystemExit("no weights keep --keep-ranking and --floor")
    # ties on the mean: the smaller loss on the worst reference figure
    worst = lambda r: min((r[k] - v for k, v in args.reference.items()), default=0)  # noqa: E731
    best = max(rows, key=lambda r: (r["mean"], worst(r)))
    print("best:", json.dumps(best))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "best": best}, indent=1))


if __name__ == "__main__":
    main()
