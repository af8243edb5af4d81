"""`load(name_or_path, backend=..., device=..., threads=...)`: one entry point for all backends."""

from __future__ import annotations

import os

import torch

from fastlm.checkpoint import load_checkpoint
from fastlm.engine.backends import backend_names, get_backend_class
from fastlm.hub import resolve_checkpoint
from fastlm.kernels import cuda_kernels_available
from fastlm.language_model import LanguageModel
from fastlm.validation import check_optional_int

DEVICES_ACCEPTED = "expected cpu, cuda, cuda:N, mps, ... (None: cuda when available, else cpu)"


def pick_auto_backend(device: torch.device) -> str:
    """'triton' on CUDA when that backend is registered and its kernels can run, else 'eager'.

    On CPU "auto" is eager, decided by measurement (docs/benchmarks.md, "Long documents"):
    torch.compile is no faster than eager for these small models on 2 cores once length-sorted,
    windowed batching removes padding, and costs seconds of compilation; ONNX Runtime int8 is
    1.6x (Transformer) and 2.2x (LSTM) eager's tokens/s on long documents (the "Measured" table
    there) but its first use exports the graphs (4-9 s, over the ~2 s first-call budget) and
    shipping them would add ~38 MB to the package.
    """
    if device.type == "cuda" and cuda_kernels_available():
        try:
            get_backend_class("triton")
            return "triton"
        except (ValueError, ImportError):
            return "eager"
    return "eager"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch.device a `device` argument names (None: CUDA when available, else CPU).

    A string torch cannot parse, or a device this machine lacks, is a ValueError naming the
    argument and what is accepted (torch's RuntimeError names neither)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, str | int | torch.device):
        raise TypeError(
            f"device must be a str or torch.device (or an accelerator index), got "
            f"{type(device).__name__} {device!r}"
        )
    try:
        dev = torch.device(device)
    except RuntimeError:  # an unknown string, or an index on a machine without accelerator
        raise ValueError(f"device {device!r} is not available: {DEVICES_ACCEPTED}") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if dev.type in available and not available[dev.type]():
        kind = dev.type.upper()
        raise ValueError(f"device {str(dev)!r} requested but no {kind} device is available")
    return dev


def load(
    name_or_path: str | os.PathLike = "transformer",
    backend: str = "auto",
    device: str | torch.device | None = None,
    threads: int | None = None,
    **backend_options,
) -> LanguageModel:
    """Load a shipped model by name ("transformer", "lstm") or a checkpoint/run directory.

    backend: "auto" | "eager" | "compile" | "onnx" | "triton". device: "cpu", "cuda", ... (default:
    CUDA when available). threads: intra-op threads for this model's calls (torch's count is
    set for each call and restored after it; ONNX Runtime's belongs to its sessions); None
    leaves the defaults.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    check_optional_int(threads, "threads", min=1)  # True is not a thread count
    dev = resolve_device(device)
    name = backend if backend != "auto" else pick_auto_backend(dev)
    cls = get_backend_class(name)
    ckpt = load_checkpoint(resolve_checkpoint(name_or_path), device=dev)
    label = os.fspath(name_or_path)
    backend_obj = cls(ckpt, dev, threads, **backend_options)
    backend_obj.info = backend_obj.info.with_identity(ckpt.weights_digest, ckpt.tokenizer)
    return LanguageModel(label, backend_obj)


__all__ = ["backend_names", "load", "pick_auto_backend", "resolve_device"]
