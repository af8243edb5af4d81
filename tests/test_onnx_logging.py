"""The slow first use and the CUDA -> CPU fallback are logged on the "fastlm" logger."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("onnxruntime")

from fastlm.checkpoint import load_checkpoint  # noqa: E402
from fastlm.engine.onnx_backend import OnnxBackend  # noqa: E402
from fastlm.hub import resolve_checkpoint  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_first_use_export_and_cpu_fallback_are_logged(tmp_path, caplog):
    ckpt = load_checkpoint(resolve_checkpoint("lstm"))
    caplog.set_level(logging.INFO, logger="fastlm")
    # a CUDA device object on a machine without CUDA: ONNX Runtime can only use the CPU
    OnnxBackend(ckpt, torch.device("cuda"), 1, cache_dir=tmp_path)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert any(
        level == logging.INFO and "exporting" in msg and "first use" in msg
        for name, level, msg in records
        if name == "fastlm"
    ), records
    assert any(
        level == logging.WARNING and "running on CPU" in msg
        for name, level, msg in records
        if name == "fastlm"
    ), records
    caplog.clear()
    OnnxBackend(ckpt, torch.device("cpu"), 1, cache_dir=tmp_path)  # cached: no export, no warning
    assert not [r for r in caplog.records if r.name == "fastlm"]
