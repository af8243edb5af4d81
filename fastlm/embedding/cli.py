"""`fastlm evaluate MODEL --sts FILE.tsv --pairs FILE.tsv --retrieval DIR`: embedding quality on
your data. Every file is read and checked before the model loads, so a malformed one is refused
at once (one line naming the file and line)."""

from __future__ import annotations

import functools
import json

from fastlm.cli import positive_int

KINDS = ("sts", "pairs", "retrieval")  # the flags, in the order figures are printed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="embedding quality: STS Spearman x100, pair AP x100 and/or BEIR retrieval nDCG@10, "
        "Recall@100",
    )
    p.add_argument("model", help="shipped model name, checkpoint or run directory")
    p.add_argument(
        "--sts",
        action="append",
        default=[],
        help="TSV with a header and columns sentence1, sentence2, score (repeatable)",
    )
    p.add_argument(
        "--pairs",
        action="append",
        default=[],
        help="TSV with a header and columns sentence1, sentence2, label (0/1): average "
        "precision of the cosine (repeatable)",
    )
    p.add_argument(
        "--retrieval",
        action="append",
        default=[],
        help="BEIR directory: corpus.jsonl, queries.jsonl, qrels.tsv (or qrels/test.tsv; "
        "TREC 4-column qrels are read too)",
    )
    p.add_argument(
        "--mode",
        action="append",
        choices=("dense", "lexical", "hybrid"),
        help="retrieval search: dense cosine (default), lexical BM25 or hybrid fusion; "
        "repeatable, figures side by side",
    )
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import fastlm
    from fastlm.embedding import evaluate as ev

    tasks = {
        "sts": (ev.read_sts_tsv, ev.sts_figures),
        "pairs": (ev.read_labelled_pairs_tsv, ev.pair_figures),
        "retrieval": (ev.read_beir, ev.retrieval_figures_by_mode),
    }
    modes = tuple(dict.fromkeys(args.mode or ["dense"]))  # in the order given, once each
    if not any(getattr(args, kind) for kind in KINDS):
        raise ValueError("give at least one --sts FILE, --pairs FILE or --retrieval DIR")
    data = {kind: {p: tasks[kind][0](p) for p in getattr(args, kind)} for kind in KINDS}
    model = fastlm.load(args.model, backend=args.backend)
    results = {"model": args.model}
    for kind in KINDS:
        figures = tasks[kind][1]
        if kind == "retrieval":
            figures = functools.partial(figures, modes=modes)
        results[kind] = {
            p: figures(model, d, batch_size=args.batch_size) for p, d in data[kind].items()
        }
    if args.json:
        print(json.dumps(results))
        return 0
    for path, r in results["sts"].items():
        print(f"STS        {path}: Spearman x100 {r['spearman']:.2f} ({r['pairs']} pairs)")
    for path, r in results["pairs"].items():
        print(
            f"pairs      {path}: AP x100 {r['ap']:.2f} ({r['pairs']} pairs, "
            f"{r['positives']} positive)"
        )
    for path, r in results["retrieval"].items():
        _print_retrieval(path, r)
    return 0


def _print_retrieval(path: str, r: dict) -> None:
    """One line for one mode (as before --mode existed), else a column per mode."""
    counts = f"({r['queries']} queries, {r['documents']} documents)"
    modes = r.get("modes", {"dense": r})
    if len(modes) == 1:
        tag = "" if r.get("mode", "dense") == "dense" else f" [{r['mode']}]"
        print(
            f"retrieval  {path}{tag}: nDCG@10 {r['ndcg@10']:.2f}  Recall@100 "
            f"{r['recall@100']:.2f} {counts}"
        )
        return
    print(f"retrieval  {path}: {counts}")
    print(f"{'':<14}" + "".join(f"{mode:>10}" for mode in modes))
    for key, label in (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100")):
        print(f"  {label:<12}" + "".join(f"{f[key]:>10.2f}" for f in modes.values()))
