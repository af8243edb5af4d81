"""Backends by name: "eager" and the optional ones ("compile", "onnx", "triton"), each loaded
from its module on first use, so a missing optional dependency only removes that backend."""

from __future__ import annotations

import importlib

from fastlm.backend import Backend
from fastlm.engine.eager import TorchBackend

_REGISTRY: dict[str, type[Backend]] = {"eager": TorchBackend}
# optional backend -> (module, class, extra); a missing dependency is reported with how to
# install it
_OPTIONAL = {
    "compile": ("fastlm.engine.compiled", "CompileBackend", None),
    "onnx": ("fastlm.engine.onnx_backend", "OnnxBackend", "onnx"),
    "triton": ("fastlm.engine.triton_backend", "TritonBackend", None),  # checks triton on use
}
_MISSING: dict[str, ImportError] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    _REGISTRY[name] = cls


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    _import_optional_backends()
    if name in _MISSING and name not in _REGISTRY:
        extra = _OPTIONAL[name][2]
        raise ImportError(
            f"backend {name!r} needs {_MISSING[name].name or 'a missing module'}: "
            f'pip install "fastlm[{extra}]"',
            name=_MISSING[name].name,
        )
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available: {backend_names() + ['auto']}")
    return _REGISTRY[name]


def _import_optional_backends() -> None:
    """Register each optional backend whose module imports; a missing dependency simply leaves
    it out (and is reported when it is asked for)."""
    for name, (module, cls, extra) in _OPTIONAL.items():
        if name in _REGISTRY:
            continue
        try:
            _REGISTRY[name] = getattr(importlib.import_module(module), cls)
            _MISSING.pop(name, None)
        except ImportError as err:
            if extra is not None:
                _MISSING[name] = err
