"""fastlm.runtime: an exported model runs with onnxruntime, numpy and tokenizers only.

The main test runs the runtime in a subprocess where `import torch` fails, and checks its
answers against the PyTorch eager engine computed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from model_helpers import exported

import fastlm
import fastlm.runtime
from fastlm.runtime import OnnxModel

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "a",
    "Ünïcödé — 日本語 🤖",
    "It was the best of times, it was the worst of times. " * 6,
]
PROMPT = "Once upon a time"

CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    try:
        import torch  # noqa: F401
        raise SystemExit("torch should not be importable here")
    except ImportError:
        pass
    import numpy as np
    import fastlm.runtime
    from fastlm.language_model import LanguageModel

    out = {}
    for key, path in json.loads(sys.argv[1]).items():
        model = fastlm.runtime.load(path)
        assert isinstance(model, LanguageModel)  # the engine's class, not a copy
        texts = json.loads(sys.argv[2])
        out[key] = {
            "score": [r.log_likelihood for r in model.score(texts)],
            "embed": model.embed(texts, batch_size=2).tolist(),
            "single": model.embed(texts[0]).tolist(),
            "empty_shape": list(model.embed([]).shape),
            "greedy": model.generate(sys.argv[3], max_new_tokens=24, temperature=0),
            "sampled": [model.generate(sys.argv[3], 16, temperature=0.9, top_k=50, seed=7)
                        for _ in range(2)],
        }
    assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, small_checkpoints) -> dict[str, Path]:
    return {
        "lstm-fp32": exported(tmp_path_factory, small_checkpoints, "lstm", "fp32"),
        "transformer-fp32": exported(tmp_path_factory, small_checkpoints, "transformer", "fp32"),
        "transformer-int8": exported(tmp_path_factory, small_checkpoints, "transformer", "int8"),
    }


def test_runtime_without_torch(dirs, small_checkpoints):
    env = {**os.environ, "PYTHONPATH": str(Path(fastlm.__file__).parents[1])}
    argv = [json.dumps({k: str(v) for k, v in dirs.items()}), json.dumps(TEXTS), PROMPT]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    for key, res in got.items():
        arch, dtype = key.split("-")
        eager = fastlm.load(small_checkpoints[arch], backend="eager")
        want = eager.embed(TEXTS, batch_size=2)
        emb = np.array(res["embed"], dtype=np.float32)
        assert emb.shape == (len(TEXTS), 256) and res["empty_shape"] == [0, 256]
        assert not emb[1].any()  # "" -> zero vector
        # int8: activations are quantized per batch, so batch company moves results ~1e-4
        np.testing.assert_allclose(res["single"], emb[0], atol=1e-6 if dtype == "fp32" else 1e-3)
        np.testing.assert_allclose(np.linalg.norm(emb[[0, 2, 3, 4]], axis=1), 1.0, atol=1e-5)
        want_ll = [r.log_likelihood for r in eager.score(TEXTS)]
        if dtype == "fp32":
            np.testing.assert_allclose(emb, want, atol=1e-5)
            np.testing.assert_allclose(res["score"], want_ll, rtol=1e-4, atol=1e-3)
            assert res["greedy"] == eager.generate(PROMPT, max_new_tokens=24, temperature=0)
            # one sampler: the same seed draws the same text on both
            sampled = eager.generate(PROMPT, 16, temperature=0.9, top_k=50, seed=7)
            assert res["sampled"][0] == sampled
        else:
            assert (emb * want).sum(axis=1)[[0, 2, 3, 4]].min() > 0.99
        assert res["sampled"][0] == res["sampled"][1]  # numpy-seeded sampling is reproducible


SHIPPED_CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import fastlm.runtime

    out = {}
    for name in ("lstm", "transformer"):
        model = fastlm.runtime.load(name, threads=1)  # by name: the model's ONNX pack
        out[name] = {
            "embed": model.embed(json.loads(sys.argv[1])).tolist(),
            "greedy": model.generate(sys.argv[2], max_new_tokens=16),
            "dtypes": model.backend.describe()["dtypes"],
            "digest": model.embedding_digest,
        }
    assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
    print(json.dumps(out))
""")


def test_shipped_models_run_by_name_without_torch():
    """The runtime opens a shipped model's pack with no torch and computes what `auto` does."""
    env = {**os.environ, "PYTHONPATH": str(Path(fastlm.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", SHIPPED_CHILD, json.dumps(TEXTS), PROMPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    for name, res in got.items():
        auto = fastlm.load(name, threads=1)
        assert auto.backend.describe()["backend"] == "onnx"  # the same pack, through the engine
        assert res["dtypes"] == {"embed": "int8", "lm": "fp32", "decode": "fp32"}
        assert res["digest"] == auto.embedding_digest  # an Index built by either opens in both
        np.testing.assert_allclose(res["embed"], auto.embed(TEXTS), atol=1e-6)
        assert res["greedy"] == fastlm.load(name, backend="eager").generate(PROMPT, 16)


def test_a_name_that_is_neither_shipped_nor_a_directory_is_refused():
    with pytest.raises(ValueError, match="not found"):
        fastlm.runtime.load("no-such-model")


@pytest.fixture(scope="module")
def transformer(dirs) -> OnnxModel:
    return OnnxModel.load(dirs["transformer-fp32"], threads=1)


def test_generate_options(transformer):
    a = transformer.generate(PROMPT, 12, temperature=1.0, seed=1)
    assert a == transformer.generate(PROMPT, 12, temperature=1.0, seed=1)
    greedy = [transformer.generate(p, 6, temperature=0) for p in (PROMPT, "The")]
    assert transformer.generate([PROMPT, "The"], 6) == greedy  # a list; greedy by default
    ids = transformer.generate([1, 40], max_new_tokens=5, temperature=0.5, top_k=1)
    assert ids == transformer.generate([1, 40], max_new_tokens=5, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        transformer.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        transformer.generate(PROMPT, temperature=float("nan"))
    with pytest.raises(ValueError, match="top_k"):
        transformer.generate(PROMPT, temperature=1.0, top_k=0)
    with pytest.raises(TypeError, match="token ids must be a list of int"):
        transformer.generate(123)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        transformer.generate([1, 2000])
    with pytest.raises(ValueError, match="exceeds the context"):
        transformer.generate([1] * 4990, max_new_tokens=20)


def test_embed_options(transformer):
    raw = transformer.embed(TEXTS[:1], normalize=False)
    assert np.linalg.norm(raw) > 0
    np.testing.assert_allclose(transformer.embed(TEXTS[:1]), raw / np.linalg.norm(raw), atol=1e-6)
    ids = np.array([transformer.tokenizer.encode(TEXTS[4])[:3]])
    first3 = transformer.backend.embed_batch(ids, np.ones_like(ids))[0]
    want = first3 / np.linalg.norm(first3)
    branch = transformer.backend.lexical  # it reads the same 3 tokens' text
    if branch is not None:
        prefix = transformer.tokenizer.decode(ids[0].tolist())
        want = want + branch.weight * branch.vectors([prefix])[0]
    np.testing.assert_allclose(
        transformer.embed(TEXTS[4], max_length=3), want / np.linalg.norm(want), atol=1e-6
    )
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        transformer.embed(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        transformer.embed(["x"], batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        OnnxModel.load(transformer.path, threads=0)
