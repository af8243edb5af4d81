"""Shared test fixtures.

Triton kernels run under the CPU interpreter when no CUDA device is present. Triton reads
TRITON_INTERPRET when a kernel is decorated, so it must be set before anything imports
fastlm.kernels: conftest.py is the first code pytest runs. It also patches triton 3.6's
interpreter for numpy >= 2.4 there (one copy, for every test module that runs kernels).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_helpers import exported

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_for_numpy_2_4() -> None:
    """Let `range()` over a kernel argument run in triton 3.6's interpreter on numpy >= 2.4.

    The interpreter holds scalars as 1-element arrays and calls int() on them, which numpy
    2.4 rejects (triton-lang/triton#9171). This applies the upstream fix (#9172).
    """
    import numpy as np

    try:
        from triton.runtime import interpreter
    except ImportError:
        return  # no triton: the kernel tests skip themselves
    try:
        int(np.ones(1))
        return  # numpy < 2.4
    except TypeError:
        pass
    original = interpreter._patch_lang_tensor
    if getattr(original, "fixed_for_numpy_2_4", False):
        return

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.fixed_for_numpy_2_4 = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if not torch.cuda.is_available():
    _fix_interpreter_for_numpy_2_4()  # before any test module imports fastlm.kernels

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _fallback_corpus(tmp: Path) -> Path:
    """A small corpus built from Python's own docstrings, for clones without ../shared."""
    import collections
    import inspect
    import json
    import pydoc  # noqa: F401  (imported for its docstrings below)

    texts = []
    for mod in (inspect, json, collections, pydoc, os):
        for name in dir(mod):
            doc = getattr(getattr(mod, name, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                texts.append(doc.strip())
    body = "\n\n".join(texts)
    out = tmp / "docs_corpus"
    out.mkdir()
    n = len(body)
    (out / "train.txt").write_text(body[: int(n * 0.8)], encoding="utf-8")
    (out / "valid.txt").write_text(body[int(n * 0.8) : int(n * 0.9)], encoding="utf-8")
    (out / "test.txt").write_text(body[int(n * 0.9) :], encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Directory with train.txt / valid.txt / test.txt: ../shared/data/tiny, or a fallback."""
    tiny = SHARED_DATA / "tiny"
    if (tiny / "train.txt").is_file():
        return tiny
    return _fallback_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data):
    from fastlm.tokenizer import Tokenizer

    return Tokenizer.train([tiny_data / "train.txt"], vocab_size=2000)


def _train_small(arch: str, data: Path, out: Path, steps: int = 40) -> Path:
    from fastlm.training import TrainConfig, train

    cfg = TrainConfig(
        model=arch,
        data=[str(data / "train.txt")],
        out=str(out),
        steps=steps,
        batch_size=8,
        seq_len=64,
        lr=3e-3,
        warmup_steps=5,
        dropout=0.0,
        eval_every=10_000,
        ckpt_every=10_000,
        progress=False,
        cache_dir=str(out.parent / "token-cache"),
    )
    return train(cfg)


def tiny_train_config(setup, out: Path, **overrides):
    """A small, fast TrainConfig of the real (SPEC-sized) models over `train_setup`'s files."""
    from fastlm.training import TrainConfig

    kw = dict(
        model="lstm",
        data=[str(setup.train)],
        out=str(out),
        tokenizer=str(setup.tok),
        batch_size=4,
        seq_len=16,
        lr=3e-3,
        warmup_steps=2,
        steps=8,
        eval_every=10**6,
        eval_tokens=256,
        ckpt_every=10**6,
        log_every=1,
        progress=False,
        threads=1,
        cache_dir=str(setup.cache),
        seed=0,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory, tiny_data, tiny_tokenizer):
    """Paths shared by a module's training runs (training text, a saved tokenizer, a token
    cache) and `config(out, **overrides)`: a tiny_train_config over them."""
    root = tmp_path_factory.mktemp("train")
    tiny_tokenizer.save(root / "tokenizer.json")
    setup = SimpleNamespace(
        train=tiny_data / "train.txt", tok=root / "tokenizer.json", cache=root / "cache"
    )
    setup.config = functools.partial(tiny_train_config, setup)
    return setup


def _with_tower(ckpt_dir: Path, out: Path) -> Path:
    """A copy of a checkpoint with an embedding tower whose weights differ from the LM's (a
    perturbed copy and a random projection), as shipped models have: every backend test on
    these checkpoints then checks the tower, not the LM's pooling. It also gets a lexical
    branch (a random table), so every backend's embed() is checked with the branch mixed in."""
    from fastlm.char_ngrams import LexicalBranch
    from fastlm.checkpoint import load_checkpoint, save_checkpoint
    from fastlm.models.embedder import new_tower

    ck = load_checkpoint(ckpt_dir)
    tower = new_tower(ck.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tower.encoder.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
        tower.proj.weight.add_(0.05 * torch.randn(tower.proj.weight.shape, generator=gen))
        tower.proj.bias.add_(0.1 * torch.randn(tower.proj.bias.shape, generator=gen))
    facts = {k: v for k, v in ck.manifest.items() if k not in ("format", "architecture", "files")}
    table = np.random.default_rng(0).standard_normal((1024, tower.dim)).astype(np.float32)
    lexical = LexicalBranch(table, weight=0.5, query_weight=2.0)  # queries lean on words
    return save_checkpoint(
        out, ck.model, ck.tokenizer, extra_manifest=facts, embedder=tower, lexical=lexical
    )


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """{"lstm": dir, "transformer": dir}: SPEC-sized models trained 40 steps on the tiny corpus
    (enough for peaked, non-random logits; seconds on a CPU), each with an embedding tower."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        arch: _with_tower(_train_small(arch, tiny_data, root / arch), root / f"{arch}-tower")
        for arch in ("lstm", "transformer")
    }


@pytest.fixture(scope="session")
def export_of(tmp_path_factory, small_checkpoints):
    """(arch, dtype) -> the session's export of small_checkpoints[arch] (`exported`)."""
    return lambda arch, dtype="fp32": exported(tmp_path_factory, small_checkpoints, arch, dtype)


@pytest.fixture
def export_copy(export_of, tmp_path):
    """arch -> a private copy of the session's fp32 export of that architecture, free to edit."""

    def copy(arch: str) -> Path:
        dst = tmp_path / f"{arch}-export"
        shutil.copytree(export_of(arch), dst)
        return dst

    return copy


@pytest.fixture
def no_tf32():
    """fp32 references on a GPU without TF32 (cuDNN's and cuBLAS's default on Ampere and later:
    ~5e-5 error against fp32 tolerances of 1e-4). Saved and restored by hand: these are
    properties of torch's backend modules, which pytest's monkeypatch cannot always undo."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


@pytest.fixture
def saved_index(tmp_path) -> Path:
    """An index saved at tmp_path/idx from index_helpers.corpus(1), with a stand-in model."""
    from index_helpers import save_stub_index

    path = tmp_path / "idx"
    save_stub_index(path, 1)
    return path
