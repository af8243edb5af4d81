"""`fastlm evaluate MODEL --sts FILE.tsv --retrieval DIR`: embedding quality on your data."""

from __future__ import annotations

import json

from fastlm.cli import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="embedding quality: STS Spearman x100 and/or BEIR retrieval nDCG@10, Recall@100",
    )
    p.add_argument("model", help="shipped model name, checkpoint or run directory")
    p.add_argument(
        "--sts",
        action="append",
        default=[],
        help="TSV with a header and columns sentence1, sentence2, score (repeatable)",
    )
    p.add_argument(
        "--retrieval",
        action="append",
        default=[],
        help="BEIR directory: corpus.jsonl, queries.jsonl, qrels.tsv (or qrels/test.tsv)",
    )
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import fastlm
    from fastlm.embedding.evaluate import evaluate_retrieval, evaluate_sts

    if not args.sts and not args.retrieval:
        raise ValueError("give at least one --sts FILE or --retrieval DIR")
    model = fastlm.load(args.model, backend=args.backend)
    results = {"model": args.model, "sts": {}, "retrieval": {}}
    for path in args.sts:
        results["sts"][path] = evaluate_sts(model, path, args.batch_size)
    for path in args.retrieval:
        results["retrieval"][path] = evaluate_retrieval(model, path, args.batch_size)
    if args.json:
        print(json.dumps(results))
        return 0
    for path, r in results["sts"].items():
        print(f"STS        {path}: Spearman x100 {r['spearman']:.2f} ({r['pairs']} pairs)")
    for path, r in results["retrieval"].items():
        print(
            f"retrieval  {path}: nDCG@10 {r['ndcg@10']:.2f}  Recall@100 {r['recall@100']:.2f} "
            f"({r['queries']} queries, {r['documents']} documents)"
        )
    return 0
