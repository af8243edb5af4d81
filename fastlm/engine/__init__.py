"""The torch engine: the backends that run a checkpoint with PyTorch (eager, compile, triton)
or export it for ONNX Runtime on first use (onnx), and `load`, which picks one ("auto")."""

from fastlm.engine.loading import load
from fastlm.engine.registry import backend_names, get_backend_class, register_backend

__all__ = ["backend_names", "get_backend_class", "load", "register_backend"]
