"""`load(name_or_path, backend=..., device=..., threads=...)`: one entry point for all backends."""

from __future__ import annotations

import logging
import os

import torch

from fastlm.checkpoint import load_checkpoint
from fastlm.engine.registry import backend_names, get_backend_class
from fastlm.hub import resolve_checkpoint
from fastlm.kernels import cuda_kernels_available
from fastlm.language_model import LanguageModel
from fastlm.ort.format import ExportDirError
from fastlm.ort.packs import read_pack
from fastlm.validation import ArgumentTypeError, ArgumentValueError, check_optional_int

log = logging.getLogger("fastlm")

DEVICES_ACCEPTED = "expected cpu, cuda, cuda:N, mps, ... (None: cuda when available, else cpu)"


# The accuracy budget "auto" holds, read from each packed graph's parity certificate (probes
# against eager PyTorch fp32): embeddings within cosine 0.999 and 99% top-10 ranking overlap;
# scoring and decoding give eager's greedy tokens exactly.
AUTO_EMBED_COSINE_MIN, AUTO_TOP10_MIN, AUTO_GREEDY_AGREEMENT = 0.999, 0.99, 1.0


def pick_auto_backend(device: torch.device) -> str:
    """'triton' on CUDA when that backend is registered and its kernels can run, else 'eager'.
    (On a CPU, `choose_auto` runs a checkpoint's certified ONNX pack before falling back here.)"""
    if device.type == "cuda" and cuda_kernels_available():
        try:
            get_backend_class("triton")
            return "triton"
        except (ValueError, ImportError):
            return "eager"
    return "eager"


def choose_auto(device: torch.device, checkpoint) -> tuple[str, dict, str]:
    """(backend name, its options, why) for backend="auto".

    On a CPU: ONNX Runtime over the graphs packed with the checkpoint (fastlm/export/pack.py:
    the shipped models carry int8 embed and fp32 lm/decode graphs) when onnxruntime is installed,
    the pack verifies against these weights and its certificates hold the budget above; it is
    1.4-2.8x eager (docs/benchmarks.md, "auto on a CPU"). Otherwise eager, saying why (INFO when
    onnxruntime or a pack is absent, WARNING when a pack is refused)."""
    fallback = pick_auto_backend(device)
    if device.type != "cpu":
        return fallback, {}, f"{fallback} on {device.type}"
    try:
        import onnxruntime  # noqa: F401  (the optional `cpu` extra)
    except ImportError:
        why = 'onnxruntime is not installed (pip install "fastlm[cpu]" for the faster backend)'
        log.info("backend auto: eager, %s", why)
        return fallback, {}, why
    from fastlm.ort.sessions import onnxruntime_too_old

    old = onnxruntime_too_old()
    if old:
        log.warning("backend auto: eager, %s", old)
        return fallback, {}, old
    try:
        packed = read_pack(checkpoint.path, checkpoint.weights_digest)
    except FileNotFoundError:
        why = f"{checkpoint.path.name} carries no ONNX pack"
        log.info("backend auto: eager, %s", why)
        return fallback, {}, why
    except ExportDirError as err:
        why = f"its ONNX pack was refused: {err}"
        log.warning("backend auto: eager, %s", why)
        return fallback, {}, why
    short = _certificate_shortfalls(packed)
    if short:
        why = f"its ONNX pack is outside the accuracy budget: {'; '.join(short)}"
        log.warning("backend auto: eager, %s", why)
        return fallback, {}, why
    embed = packed.certificate("embed")
    why = (
        f"certified ONNX pack: embed {packed.dtypes['embed']} (cosine to eager >= "
        f"{embed['embedding']['cosine_min']:.5f}, top-10 overlap "
        f"{embed['ranking']['top10_overlap']:.0%}), lm/decode {packed.dtypes['decode']} "
        "(greedy tokens identical to eager)"
    )
    return "onnx", {"packed": packed}, why


def _certificate_shortfalls(packed) -> list[str]:
    """What in the pack's certificates misses the "auto" budget (empty: none)."""
    short = []
    try:
        embed = packed.certificate("embed")
        cosine, overlap = embed["embedding"]["cosine_min"], embed["ranking"]["top10_overlap"]
        # written `not (x >= bound)`: a NaN (json reads one) fails every bound
        if not cosine >= AUTO_EMBED_COSINE_MIN:
            short.append(f"embed cosine min {cosine} < {AUTO_EMBED_COSINE_MIN}")
        if not overlap >= AUTO_TOP10_MIN:
            short.append(f"embed top-10 overlap {overlap} < {AUTO_TOP10_MIN}")
        for role in ("lm", "decode"):
            greedy = packed.certificate(role)["greedy"]["agreement"]
            if not greedy >= AUTO_GREEDY_AGREEMENT:
                short.append(f"{role} greedy agreement {greedy} < {AUTO_GREEDY_AGREEMENT}")
        short += [f"the {r} certificate did not pass" for r in packed.dtypes
                  if packed.certificate(r).get("passed") is not True]  # fmt: skip
    except (KeyError, TypeError, AttributeError) as err:
        short.append(f"a certificate lacks {err}")
    return short


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch.device a `device` argument names (None: CUDA when available, else CPU).

    A string torch cannot parse, or a device this machine lacks, is a ValueError naming the
    argument and what is accepted (torch's RuntimeError names neither)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, str | int | torch.device):
        raise ArgumentTypeError(
            f"device must be a str or torch.device (or an accelerator index), got "
            f"{type(device).__name__} {device!r}",
            "device",
        )
    try:
        dev = torch.device(device)
    except RuntimeError:  # an unknown string, or an index on a machine without accelerator
        raise ArgumentValueError(
            f"device {device!r} is not available: {DEVICES_ACCEPTED}"
        ) from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if dev.type in available and not available[dev.type]():
        kind = dev.type.upper()
        raise ArgumentValueError(f"device {str(dev)!r} requested but no {kind} device is available")
    return dev


def load(
    name_or_path: str | os.PathLike = "transformer",
    backend: str = "auto",
    device: str | torch.device | None = None,
    threads: int | None = None,
    **backend_options,
) -> LanguageModel:
    """Load a shipped model by name ("transformer", "lstm") or a checkpoint/run directory.

    backend: "auto" | "eager" | "compile" | "onnx" | "triton". "auto" is triton on CUDA; on a
    CPU, ONNX Runtime over the checkpoint's certified ONNX pack when onnxruntime is installed,
    else eager (`choose_auto`; `model.backend.describe()["auto"]` says which and why; backend
    options with "auto" skip the pack). device: "cpu", "cuda", ... (default: CUDA when
    available). threads: intra-op threads for this model's calls (torch's count is
    set for each call and restored after it; ONNX Runtime's belongs to its sessions); None
    leaves the defaults.
    """
    if not isinstance(backend, str):
        raise ArgumentTypeError(f"backend must be a str, got {type(backend).__name__}", "backend")
    check_optional_int(threads, "threads", min=1)  # True is not a thread count
    dev = resolve_device(device)
    if backend != "auto":
        get_backend_class(backend)  # an unknown name fails before the checkpoint loads
    ckpt = load_checkpoint(resolve_checkpoint(name_or_path), device=dev)
    choice = None
    if backend == "auto" and not backend_options:
        backend, options, why = choose_auto(dev, ckpt)
        backend_options, choice = options, {"chosen": backend, "why": why}
    elif backend == "auto":  # options name what to run: the plain fallback takes them
        backend = pick_auto_backend(dev)
    label = os.fspath(name_or_path)
    try:
        backend_obj = get_backend_class(backend)(ckpt, dev, threads, **backend_options)
    except ExportDirError as err:  # a pack that verified, but whose graphs ORT refuses
        if choice is None:
            raise
        why = f"its ONNX pack could not be opened: {err}"
        log.warning("backend auto: eager, %s", why)
        backend, choice = pick_auto_backend(dev), {"chosen": "eager", "why": why}
        backend_obj = get_backend_class(backend)(ckpt, dev, threads)
    backend_obj.auto_choice = choice
    backend_obj.info = backend_obj.info.with_identity(ckpt.weights_digest, ckpt.tokenizer)
    return LanguageModel(label, backend_obj)


__all__ = ["backend_names", "choose_auto", "load", "pick_auto_backend", "resolve_device"]
