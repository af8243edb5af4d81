"""`fastlm embed`, `fastlm generate` and `fastlm score`: the Python API on the command line.

    fastlm embed "a text" "another"              # JSON lines: {"text": ..., "embedding": [...]}
    fastlm embed --input docs.txt --out vecs.npy  # one text per line -> (n, D) float32 .npy
    fastlm generate "Once upon a time" --max-new-tokens 40
    fastlm score --input test.txt --json          # one JSON object per line of text

Texts come from the arguments, else from --input FILE (or "-", standard input), one per line.
torch and numpy load when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from fastlm.cli.common import (
    UsageError,
    add_backend_flags,
    load_model,
    nonneg_float,
    positive_int,
    progress_bar,
    read_lines,
)
from fastlm.io import atomic_write
from fastlm.validation import EMBED_KINDS

OUT_FORMATS = ("jsonl", "npy")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="transformer", help="shipped name (transformer, lstm) or checkpoint dir"
    )
    add_backend_flags(p)


def _add_input_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("texts", nargs="*", metavar="TEXT", help=f"{what} (default: --input lines)")
    p.add_argument(
        "--input", metavar="FILE", help="read one text per line ('-' or default: standard input)"
    )


def _texts(args) -> list[str]:
    if args.texts and args.input:
        raise UsageError("give texts as arguments or --input, not both")
    if not args.texts and args.input is None and sys.stdin.isatty():  # would wait silently
        raise UsageError("give texts as arguments, --input FILE, or pipe them on stdin")
    return args.texts or read_lines(args.input)


# ----------------------------------------------------------------------------- embed
def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed texts: JSON lines or a .npy array",
        description='Print one JSON object per text, {"text": ..., "embedding": [D floats]}, '
        "or write an (n, D) float32 .npy file. Vectors are L2-normalised unless --no-normalize. "
        "--input is read and written chunk by chunk: memory stays bounded whatever its size, "
        "and --out appears only once the whole input is embedded.",
    )
    _add_input_flags(p, "texts to embed")
    _add_model_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens")
    p.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument(
        "--kind",
        choices=EMBED_KINDS,
        default="document",
        help="document (default) or query: the vectors of search queries",
    )
    p.add_argument("--out", metavar="FILE", help="write here (.npy or .jsonl) instead of stdout")
    p.add_argument("--format", choices=OUT_FORMATS, help="output format (default: from --out)")
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        help="lines read, embedded and written at a time (default 2048)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar with tokens/s on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_run_embed)


def _embed_format(args) -> str:
    if args.format:
        return args.format
    if args.out and Path(args.out).suffix == ".npy":
        return "npy"
    return "jsonl"


def _open_input(args):
    """(binary stream or None, name, size in bytes or None) of the texts: None for texts given as
    arguments, else --input FILE or standard input. Opened before the model loads, so a missing
    file fails at once."""
    if args.texts and args.input:
        raise UsageError("give texts as arguments or --input, not both")
    if args.texts:
        return None, "arguments", None
    if args.input in (None, "-"):
        if sys.stdin.isatty():  # would wait silently
            raise UsageError("give texts as arguments, --input FILE, or pipe them on stdin")
        return sys.stdin.buffer, "<stdin>", None
    stream = open(args.input, "rb")  # noqa: SIM115 (closed by _run_embed)
    return stream, args.input, os.fstat(stream.fileno()).st_size


def _run_embed(args) -> int:
    # numpy: only for this command
    from fastlm.embed_stream import JsonlWriter, NpyWriter, embed_stream
    from fastlm.embed_stream import read_lines as read_chunks

    fmt = _embed_format(args)
    if fmt == "npy" and not args.out and sys.stdout.isatty():
        raise UsageError("--format npy writes binary: give --out FILE.npy or redirect stdout")
    stream, name, size = _open_input(args)
    owned = stream is not None and stream is not sys.stdin.buffer
    lines = (
        read_chunks(stream, name)
        if stream is not None
        else ((t, len(t.encode("utf-8", "surrogatepass"))) for t in args.texts)
    )
    with stream if owned else contextlib.nullcontext():
        model = load_model(args)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        bar = _progress_bar(size) if show else None

        def run(out, in_place: bool) -> None:
            writer = (
                NpyWriter(out, model.embedding_dim, in_place=in_place)
                if fmt == "npy"
                else JsonlWriter(out)
            )
            try:
                stats = embed_stream(
                    model,
                    lines,
                    writer,
                    **({"chunk_texts": args.chunk_size} if args.chunk_size else {}),
                    on_chunk=None if bar is None else (lambda st, n: _advance(bar, st, n)),
                    count_tokens=bool(args.out or show),  # only the summary and bar use it
                    batch_size=args.batch_size,
                    max_length=args.max_length,
                    normalize=args.normalize,
                    kind=args.kind,
                )
            finally:
                if bar is not None:
                    bar.close()
            if args.out or show:
                print(f"fastlm embed: {stats.summary()}", file=sys.stderr)

        if args.out:

            def write(tmp: str) -> None:
                with open(tmp, "wb") as out:
                    run(out, in_place=True)

            atomic_write(args.out, write)
        else:
            # stdout may be a pipe, or a file opened for appending: never seek in it
            run(sys.stdout.buffer, in_place=False)
    return 0


def _progress_bar(size: int | None):
    return progress_bar(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="embed")


def _advance(bar, stats, nbytes: int) -> None:
    bar.update(nbytes)
    bar.set_postfix_str(f"{stats.texts:,} texts, {stats.tokens_per_second:,.0f} tokens/s")


# ----------------------------------------------------------------------------- generate
def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a text prompt (greedy unless --temperature > 0)",
        description="Print the continuation of each prompt (the prompt itself excluded). "
        "Greedy by default; --temperature > 0 samples (--seed makes it reproducible).",
    )
    _add_input_flags(p, "prompts")
    _add_model_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=50)
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=nonneg_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    p.add_argument("--json", action="store_true", help='one {"prompt", "text"} object per line')
    p.add_argument("--no-stream", dest="stream", action="store_false", help="print when done")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    prompts = _texts(args)
    model = load_model(args)
    opts = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    for prompt in prompts:
        if args.json:
            text = model.generate(prompt, **opts)
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False))
        elif args.stream:
            for piece in model.generate(prompt, stream=True, **opts):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(model.generate(prompt, **opts))
    return 0


# ----------------------------------------------------------------------------- score
def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="log-likelihood, perplexity and bits per byte of texts",
        description="Print one line per text: perplexity, bits per byte, tokens (or --json).",
    )
    _add_input_flags(p, "texts to score")
    _add_model_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    texts = _texts(args)
    model = load_model(args)
    for text, res in zip(texts, model.score(texts, batch_size=args.batch_size)):
        if args.json:
            row = {
                "text": text,
                "log_likelihood": res.log_likelihood,
                "perplexity": res.perplexity,
                "bits_per_byte": res.bits_per_byte,
                "tokens": res.tokens,
                "bytes": res.bytes,
            }
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(
                f"perplexity {res.perplexity:10.3f}  bits/byte {res.bits_per_byte:.4f}  "
                f"tokens {res.tokens:6d}  {text[:60]!r}"
            )
    return 0


def add_parser(sub) -> None:
    _add_embed(sub)
    _add_generate(sub)
    _add_score(sub)
