"""The `fastlm` command: one subcommand per module function, errors as one line.

    fastlm --version
    fastlm embed "a text" "another" --out vecs.npy
    fastlm generate "Once upon a time" --max-new-tokens 40
    fastlm eval lm runs/transformer --data test.txt
    fastlm serve transformer --port 8000

Conventions (like git, pip, curl): exit 0 ok, 1 error, 2 usage error (argparse, bad flag
values), 130 interrupted (Ctrl-C). An error is one line on stderr,
`fastlm CMD: error: ...`; `--verbose` adds the traceback. fastlm's own notices (a first-use
ONNX export) and warnings are single `fastlm: ...` lines on stderr. Every subcommand is
listed in `--help` whatever is installed: parsers import only the standard library (and
light torch-free fastlm modules), and a subcommand whose optional dependency is missing says
which extra to install.

Adding a subcommand: write `add_parser(sub)` in a module of this package, have it call
`sub.add_parser(...)` and `set_defaults(func=run)` where `run(args) -> int` imports what it
needs (torch, numpy, an extra) inside the function, and list the module in COMMAND_MODULES.
Flags and helpers more than one command uses live in fastlm/cli/common.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings

from fastlm.cli.common import UsageError, add_verbose_flag, missing_extra
from fastlm.cli.evaluate import with_default_target
from fastlm.version import __version__

# Modules with `add_parser(subparsers)`, in --help order. Parsers must not import extras.
COMMAND_MODULES = (
    "fastlm.cli.train",  # train
    "fastlm.cli.evaluate",  # eval lm|embeddings (and its aliases: eval CKPT, evaluate)
    "fastlm.cli.infer",  # embed, generate, score
    "fastlm.cli.serve",  # serve
    "fastlm.cli.export",  # export (outside fastlm.export: its package imports onnx)
    "fastlm.cli.index",  # index build|add, search
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), pointing at --help instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


class _MainParser(_Parser):
    """The top-level parser: reads the aliases argparse cannot express before parsing."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(with_default_target(args), namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _MainParser(
        prog="fastlm",
        description="Train, run, export and serve small language models.",
        epilog="exit status: 0 ok, 1 error, 2 usage error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"fastlm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="tracebacks on errors, all info logs"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for module in COMMAND_MODULES:
        __import__(module, fromlist=["add_parser"]).add_parser(sub)
    for p in sub.choices.values():  # --verbose also after the subcommand
        add_verbose_flag(p)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"  # "Is a directory: x", no "[Errno 21]"
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, ValueError | TypeError | OSError | ImportError | UsageError):
        text = f"{type(err).__name__}: {text}"  # unexpected kinds keep their name
    return text if len(text) <= 500 else text[:497] + "..."


def configure_output(verbose: bool) -> None:
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
    configure_output(verbose)
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
            traceback.print_exc()
        print(f"{prefix}error: {_one_line(err)}", file=sys.stderr)
        return 1
