"""`fastlm eval lm` and `fastlm eval embeddings`: how good a model is, on your data.

    fastlm eval lm runs/transformer --data test.txt [--seq-len N] [--json]
    fastlm eval embeddings MODEL --sts FILE.tsv --pairs FILE.tsv --retrieval DIR [--json]

`lm`: token perplexity and bits per byte of a checkpoint on a text file. `embeddings`: STS
Spearman, pair average precision and BEIR retrieval nDCG@10 / Recall@100; every file is read and
checked before the model loads, so a malformed one is refused at once (one line naming the file
and line).

Aliases, the commands' earlier names: `fastlm eval CHECKPOINT --data FILE` (no TARGET) is
`fastlm eval lm`, and `fastlm evaluate MODEL ...` is `fastlm eval embeddings`.
"""

from __future__ import annotations

import argparse
import functools
import json

from fastlm.cli.common import add_verbose_flag, checked, device_name, positive_int

TARGETS = ("lm", "embeddings")
KINDS = ("sts", "pairs", "retrieval")  # the embedding flags, in the order figures are printed
ALIASES = (
    "Aliases (the earlier names): `fastlm eval CHECKPOINT --data FILE` (no TARGET) is "
    "`fastlm eval lm`; "
    "`fastlm evaluate MODEL ...` is `fastlm eval embeddings`"
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: `eval lm` (perplexity, bits per byte) or `eval embeddings`",
        description="TARGET lm: token perplexity and bits per byte of a checkpoint on a text "
        "file. TARGET embeddings: STS Spearman x100, pair AP x100 and/or BEIR retrieval "
        f"nDCG@10, Recall@100 of a model's embeddings. {ALIASES}.",
    )
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    lm = targets.add_parser(
        "lm",
        help="token perplexity and bits per byte of a checkpoint",
        description="Token perplexity and bits per byte of a checkpoint on a text file. "
        "Alias: `fastlm eval CHECKPOINT --data FILE` (no TARGET).",
    )
    _add_lm_args(lm)
    emb = targets.add_parser(
        "embeddings",
        help="embedding quality: STS, pair AP, BEIR retrieval",
        description="Embedding quality on your data. Alias: `fastlm evaluate MODEL ...`.",
    )
    _add_embedding_args(emb)
    for target in (lm, emb):  # fastlm.cli adds --verbose to `eval`; these are one level deeper
        add_verbose_flag(target)
    alias = sub.add_parser(
        "evaluate",
        help="alias of `fastlm eval embeddings`",
        description="Alias of `fastlm eval embeddings`: embedding quality on your data.",
    )
    _add_embedding_args(alias)


def with_default_target(argv: list[str]) -> list[str]:
    """`argv` with `eval CHECKPOINT ...` (the alias, no TARGET) read as `eval lm CHECKPOINT ...`;
    anything else as it is. The top-level options take no values, so the command is the first
    argument that is not an option."""
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if at is None or argv[at] != "eval":
        return argv
    rest = [arg for arg in argv[at + 1 :] if arg not in ("-v", "--verbose")]
    if not rest or rest[0] in (*TARGETS, "-h", "--help"):
        return argv
    return [*argv[: at + 1], "lm", *argv[at + 1 :]]


# ----------------------------------------------------------------------------- lm
def _add_lm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint or run directory, or a shipped model name")
    p.add_argument("--data", required=True, help="text file to score")
    p.add_argument(
        "--seq-len", type=checked(int, "seq_len", min=1), help="window (default: training's)"
    )
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_lm)


def run_lm(args) -> int:
    # torch (checkpoint, training) and numpy (hub): only when this command runs
    from fastlm.checkpoint import load_checkpoint
    from fastlm.hub import resolve_checkpoint
    from fastlm.training import evaluate_file

    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
    seq_len = args.seq_len if args.seq_len is not None else int(ckpt.manifest.get("seq_len", 256))
    res = evaluate_file(ckpt.model, ckpt.tokenizer, args.data, seq_len, args.device)
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.path), "data": args.data, **res.as_dict()}))
    else:
        print(f"{ckpt.config.architecture} on {args.data}: {res.tokens} tokens, {res.bytes} bytes")
        print(f"token perplexity {res.ppl:.3f}   bits per byte {res.bits_per_byte:.4f}")
    return 0


# ----------------------------------------------------------------------------- embeddings
def _add_embedding_args(p: argparse.ArgumentParser) -> None:
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
    p.set_defaults(func=run_embeddings)


def run_embeddings(args) -> int:
    # numpy (the readers and metrics) and torch (load): only when this command runs
    from fastlm.embedding import evaluate as ev
    from fastlm.engine import load

    tasks = {
        "sts": (ev.read_sts_tsv, ev.sts_figures),
        "pairs": (ev.read_labelled_pairs_tsv, ev.pair_figures),
        "retrieval": (ev.read_beir, ev.retrieval_figures_by_mode),
    }
    modes = tuple(dict.fromkeys(args.mode or ["dense"]))  # in the order given, once each
    if not any(getattr(args, kind) for kind in KINDS):
        raise ValueError("give at least one --sts FILE, --pairs FILE or --retrieval DIR")
    data = {kind: {p: tasks[kind][0](p) for p in getattr(args, kind)} for kind in KINDS}
    model = load(args.model, backend=args.backend)
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
