"""What the `fastlm` commands share: errors, flag types, the model flags and loading, input lines.

Only the standard library and torch-free fastlm modules without numpy are imported here: every
command module imports this one to build its parser, and `fastlm --help` must stay fast.
"""

from __future__ import annotations

import argparse
import sys

from fastlm import validation


class UsageError(Exception):
    """A flag combination argparse cannot express is wrong: exit 2 like argparse's own errors."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


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
    import torch  # torch: only when --device is given

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r} (expected cpu, cuda, cuda:N, mps, ...)"
        ) from None
    return text


# ----------------------------------------------------------------------------- shared flags
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


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    """-v/--verbose after a (sub)command too; absent from the namespace unless given, so the
    one before the command is not overwritten."""
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="tracebacks"
    )


# ----------------------------------------------------------------------------- helpers
def load_model(args: argparse.Namespace, name: str | None = None):
    """fastlm.load of `name` (default: --model) from the shared flags (--backend --dtype --device
    --threads)."""
    from fastlm.engine import load  # torch: only when a command runs its model

    options = {}
    if args.dtype is not None:
        if args.backend != "onnx":
            raise UsageError("--dtype applies to --backend onnx")
        options["dtype"] = args.dtype
    return load(
        args.model if name is None else name,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        **options,
    )


def read_lines(path: str | None) -> list[str]:
    """Lines of a file (standard input for None or "-") without their line ends (LF or CRLF)."""
    if path in (None, "-"):
        lines = list(sys.stdin)
    else:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    # stdin keeps "\r" of Windows line ends (it is not opened in universal-newline mode)
    return [line.rstrip("\n").rstrip("\r") for line in lines]


def progress_bar(**options):
    """A tqdm progress bar (tqdm's keyword arguments)."""
    from tqdm import tqdm  # tqdm: ~25 ms at start-up, only for a command that shows a bar

    return tqdm(**options)
