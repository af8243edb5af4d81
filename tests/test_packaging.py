"""Packaging facts users rely on: extras that install together, py.typed, names IDEs can see."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extras() -> dict[str, list[str]]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # 3.10: tomli, which pytest itself requires there
        import tomli as tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return meta["project"]["optional-dependencies"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in reqs}


def test_gpu_extra_does_not_pull_both_onnxruntime_builds(extras):
    gpu = _names(extras["gpu"])
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    triton = [r for r in extras["gpu"] if r.startswith("triton")]
    assert triton and "3.6" in triton[0]  # the kernels target triton 3.6


def test_dev_extra_tests_every_optional_feature(extras):
    dev = _names(extras["dev"])
    for extra in ("onnx", "serve", "ray", "plot"):
        assert _names(extras[extra]) <= dev, extra


def test_lazy_names_are_visible_to_type_checkers():
    """Every name `fastlm.__getattr__` loads lazily is also imported under TYPE_CHECKING."""
    import fastlm

    tree = ast.parse((ROOT / "fastlm" / "__init__.py").read_text(encoding="utf-8"))
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                for alias in getattr(imp, "names", []):
                    seen[alias.name] = imp.module
    assert set(fastlm._LAZY) <= set(fastlm.__all__)
    for name in fastlm._LAZY:
        assert name in seen, name
        assert getattr(fastlm, name) is getattr(__import__(seen[name], fromlist=[name]), name)
    assert (ROOT / "fastlm" / "py.typed").is_file()


def test_ray_helper_without_ray_names_the_extra(monkeypatch):
    import sys

    from fastlm.scale import embed_dataset

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ImportError, match=r'pip install "fastlm\[ray\]"'):
        embed_dataset(object())
