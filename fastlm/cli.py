"""The `fastlm` command: train, eval, embed (and export / bench, registered by their modules)."""

from __future__ import annotations

import argparse
import json
import sys


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun for DDP)")
    p.add_argument("--model", choices=["lstm", "transformer"], required=True)
    p.add_argument("--data", nargs="+", required=True, help="text files or directories")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl)")
    p.add_argument("--valid", help="validation text file (default: valid.txt beside the data)")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: train one)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=None)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=int, help="token budget (all ranks together)")
    budget.add_argument("--steps", type=int, help="optimizer-step budget")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--device")
    p.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from fastlm.training import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    path = train(TrainConfig(**fields))
    print(f"final checkpoint: {path}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="token perplexity and bits per byte of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint or run directory, or a shipped model name")
    p.add_argument("--data", required=True, help="text file to score")
    p.add_argument("--seq-len", type=int, help="window (default: the training seq_len)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
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


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed lines of text; prints a JSON array per line")
    p.add_argument("texts", nargs="*", help="texts (default: lines of standard input)")
    p.add_argument("--model", default="transformer")
    p.add_argument("--backend", default="auto")
    p.set_defaults(func=_run_embed)


def _run_embed(args) -> int:
    import fastlm

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    model = fastlm.load(args.model, backend=args.backend)
    vecs = model.embed(texts)
    for text, vec in zip(texts, vecs):
        print(json.dumps({"text": text, "embedding": [round(float(x), 6) for x in vec]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_embed):
        add(sub)
    for module in ("fastlm.export.cli", "fastlm.bench_cli", "fastlm.embedding.cli"):
        try:
            __import__(module, fromlist=["add_parser"]).add_parser(sub)
        except ImportError:
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"fastlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
