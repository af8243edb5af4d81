"""The torch.compile backend: parity with eager, and no recompilation once warm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import PARITY_TEXTS, row_cosines
from torch._dynamo.testing import CompileCounterWithBackend

import fastlm


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_no_recompile_once_warm(arch, small_checkpoints):
    """Counts dynamo frames with a cheap backend: varied batch/length shapes after warm-up
    must not compile again (dynamic shapes + padding to >= 2 rows and length buckets)."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    m = fastlm.load(small_checkpoints[arch], backend="compile", compile_backend=counter)
    m.embed(["warm up text", "two"])
    m.score(["warm up text", "two"])
    m.generate([5, 6, 7], max_new_tokens=3, temperature=0)
    warm = counter.frame_count
    assert warm >= 1
    rng = np.random.default_rng(0)
    for n in (1, 3, 7, 2):
        texts = [" ".join(["word"] * int(rng.integers(1, 90))) for _ in range(n)]
        m.embed(texts, batch_size=4)
        m.score(texts)
    m.generate([5, 6, 7, 8, 9], max_new_tokens=40, temperature=0)
    assert counter.frame_count == warm, f"recompiled: {counter.frame_count - warm} new frames"


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_inductor_parity_with_eager(arch, small_checkpoints):
    torch._dynamo.reset()
    eager = fastlm.load(small_checkpoints[arch], backend="eager")
    comp = fastlm.load(small_checkpoints[arch], backend="compile")
    # Inductor compiles cost tens of seconds on 2 cores, so each graph is built once here: the
    # embed forward and the scoring forward (Transformer only: the LSTM's stay eager) and the
    # decode step. They are separate graphs: embed runs the tower's own encoder copy, scoring
    # the LM's hidden_states + fc; test_no_recompile_once_warm covers their shapes.
    a, b = comp.embed(PARITY_TEXTS, batch_size=4), eager.embed(PARITY_TEXTS, batch_size=4)
    diff = np.abs(a - b).max()
    assert diff < 1e-4, f"max abs diff {diff} at row {np.abs(a - b).max(1).argmax()}"
    assert row_cosines(a, b).min() > 0.99999
    got, want_ll = comp.score(PARITY_TEXTS), eager.score(PARITY_TEXTS)
    assert [r.tokens for r in got] == [r.tokens for r in want_ll]
    np.testing.assert_allclose(
        [r.log_likelihood for r in got], [r.log_likelihood for r in want_ll], rtol=1e-4, atol=1e-6
    )
    prompt = eager.tokenizer.encode("It was the best of times")
    want = eager.generate(prompt, max_new_tokens=24, temperature=0)
    assert comp.generate(prompt, max_new_tokens=24, temperature=0) == want
    info = comp.backend.describe()
    assert info["backend"] == "compile" and "compile_seconds" in info
