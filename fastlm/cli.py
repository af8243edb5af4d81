"""The `fastlm` command: one subcommand per module function, errors as one line.

    fastlm --version
    fastlm embed "a text" "another" --out vecs.npy
    fastlm generate "Once upon a time" --max-new-tokens 40
    fastlm serve transformer --port 8000

Conventions (like git, pip, curl): exit 0 ok, 1 error, 2 usage error (argparse, bad flag
values), 130 interrupted (Ctrl-C). An error is one line on stderr,
`fastlm CMD: error: ...`; `--verbose` adds the traceback. fastlm's own notices (a first-use
ONNX export) and warnings are single `fastlm: ...` lines on stderr. Every subcommand is
listed in `--help` whatever is installed: parsers import only the standard library, and a
subcommand whose optional dependency is missing says which extra to install.

Adding a subcommand: write `add_parser(sub)` (stdlib imports only) in a module, have it call
`sub.add_parser(...)` and `set_defaults(func=run)` where `run(args) -> int` imports what it
needs, and list the module in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

from fastlm import __version__

# Modules with `add_parser(subparsers)`, in --help order. Parsers must not import extras.
COMMAND_MODULES = (
    "fastlm.cli",  # train, eval
    "fastlm.cli_infer",  # embed, generate, score
    "fastlm.serve.cli",  # serve
    "fastlm.cli_export",  # export (outside fastlm.export: its package imports onnx)
    "fastlm.cli_bench",  # bench
    "fastlm.embedding.cli",  # evaluate
    "fastlm.cli_index",  # index build|add, search
)

# import name of an optional dependency -> the extra that installs it
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "fastapi": "serve",
    "uvicorn": "serve",
    "ray": "ray",
    "pyarrow": "ray",
    "triton": "gpu",
    "matplotlib": "plot",
}


class UsageError(Exception):
    """A flag combination argparse cannot express is wrong: exit 2 like argparse's own errors."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_extra(err: ImportError) -> MissingExtra | None:
    """The MissingExtra for an ImportError of a known optional dependency, else None."""
    if isinstance(err, MissingExtra):
        return err
    top = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return MissingExtra(f'{top} is not installed; install it with: pip install "fastlm[{extra}]"')


# ----------------------------------------------------------------------------- flag types
def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (so `--threads -1` is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def checked(kind: type, name: str, **bounds):
    """argparse type: `kind(text)` checked by fastlm.validation under the API's name and rules,
    so the command line and the API refuse the same values with the same words."""
    from fastlm import validation

    check = validation.check_int if kind is int else validation.check_float

    def parse(text: str):
        try:
            return check(kind(text), name, **bounds)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


def device_name(text: str) -> str:
    """argparse type: a device torch understands ("cpu", "cuda", "cuda:1", ...)."""
    import torch  # only when --device is given

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r} (expected cpu, cuda, cuda:N, mps, ...)"
        ) from None
    return text


# What the flags offer, spelled out here so `--help` imports no torch (the tests compare them
# with fastlm.engine.backend_names() and fastlm.export.DTYPES).
BACKEND_CHOICES = ("auto", "eager", "compile", "onnx", "triton")
ONNX_DTYPES = ("fp32", "fp16", "int8")


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """--backend, --dtype, --device and --threads: how a command runs its model."""
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    p.add_argument(
        "--dtype", choices=ONNX_DTYPES, help="ONNX weights precision (with --backend onnx)"
    )
    add_device_flags(p)


def add_device_flags(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--device", type=device_name, default=default, help="cpu, cuda, cuda:N (default: auto)"
    )
    p.add_argument("--threads", type=positive_int, help="intra-op CPU threads")


def read_lines(path: str | None) -> list[str]:
    """Lines of a file (standard input for None or "-") without their line ends (LF or CRLF)."""
    if path in (None, "-"):
        lines = list(sys.stdin)
    else:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    # stdin keeps "\r" of Windows line ends (it is not opened in universal-newline mode)
    return [line.rstrip("\n").rstrip("\r") for line in lines]


# ----------------------------------------------------------------------------- train / eval
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun for DDP)")
    p.add_argument(
        "--model", required=True, help="architecture: lstm, transformer (any registered one)"
    )
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
    p.add_argument("--cache-dir")
    add_device_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from fastlm.training import TrainConfig, train

    skip = ("func", "command", "verbose")
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    try:
        config = TrainConfig(**fields)  # checks every flag before any file is touched
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None  # a bad flag value: exit 2, like argparse's
    path = train(config)
    print(f"final checkpoint: {path}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="token perplexity and bits per byte of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint or run directory, or a shipped model name")
    p.add_argument("--data", required=True, help="text file to score")
    p.add_argument(
        "--seq-len", type=checked(int, "seq_len", min=1), help="window (default: training's)"
    )
    p.add_argument("--device", type=device_name, default="cpu")
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


def add_parser(sub) -> None:
    _add_train(sub)
    _add_eval(sub)


# ----------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), pointing at --help instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastlm",
        description="Train, run, export and serve small language models.",
        epilog="exit status: 0 ok, 1 error, 2 usage error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"fastlm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="tracebacks on errors, all info logs"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        __import__(module, fromlist=["add_parser"]).add_parser(sub)
    for p in sub.choices.values():  # --verbose also after the subcommand
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="tracebacks"
        )
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"  # "Is a directory: x", no "[Errno 21]"
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, ValueError | TypeError | OSError | ImportError | UsageError):
        text = f"{type(err).__name__}: {text}"  # unexpected kinds keep their name
    return text if len(text) <= 500 else text[:497] + "..."


def _configure_output(verbose: bool) -> None:
    """fastlm's own INFO logs (a first-use ONNX export takes seconds) and warnings as single
    `fastlm: ...` lines on stderr; other libraries' INFO logs only with --verbose."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="fastlm: %(levelname)s: %(message)s",
    )
    logging.getLogger("fastlm").setLevel(logging.INFO)
    if not verbose:

        def one_line(message, category, filename, lineno, file=None, line=None):
            print(f"fastlm: {category.__name__}: {message}", file=sys.stderr)

        warnings.showwarning = one_line


def _silence_stdout() -> None:
    """After EPIPE (`fastlm embed | head`): point stdout at /dev/null so the interpreter's
    final flush does not raise again (the recipe in Python's signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    _configure_output(verbose)
    prefix = f"fastlm {args.command}: "
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        print(f"\n{prefix}interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the program's boundary: one line, the traceback on --verbose
        if isinstance(err, ImportError):
            err = missing_extra(err) or err
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"{prefix}error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Delegate to the imported module: `python -m fastlm.cli` would otherwise hold two copies of
    # this module, and errors raised with one copy's classes would miss the other's handlers.
    from fastlm.cli import main as _main

    sys.exit(_main())
