"""Embedding forward latency at fixed shapes (batch x tokens), per backend and model.

Times `backend.embed_batch` on a full (B, T) batch of random ids: the model forward plus
masked mean pooling, without tokenisation or batching (the end-to-end suite covers those).
Gates: speed vs eager in the same run (bench/thresholds.py). FLOP figures use
2 * matmul params * tokens (+ 4 * T^2 * d * layers * B attention for the Transformer).
"""

from __future__ import annotations

import pytest

from tools.benchmarking import ARCHS, BACKENDS, embed_flops, random_batch

# name -> (batch, tokens, rounds, warm-up rounds): fewer rounds where one call takes seconds
SHAPES = {"1x16": (1, 16, 30, 3), "32x64": (32, 64, 10, 2), "256x128": (256, 128, 3, 1)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("key", list(BACKENDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_embed(bench, lms, bench_env, arch, key, shape):
    lm, eager = lms(arch, key), lms(arch, "eager")
    batch, tokens, rounds, warmup = SHAPES[shape]
    ids, mask = random_batch(batch, tokens, lm.info.vocab_size)
    candidate = lambda: lm.backend.embed_batch(ids, mask)  # noqa: E731
    baseline = (lambda: eager.backend.embed_batch(ids, mask)) if key != "eager" else None
    timing = bench.run(candidate, baseline, rounds, warmup)
    flops = embed_flops(eager.backend.model, batch, tokens)
    gflops = flops / timing.seconds / 1e9
    bench.describe(
        "embed",
        arch,
        key,
        shape=[batch, tokens],
        tokens=batch * tokens,
        gflop=round(flops / 1e9, 3),
        ms=round(1000 * timing.seconds, 3),
        tokens_per_s=round(batch * tokens / timing.seconds),
        gflops=round(gflops, 2),
        roof_fraction=round(gflops / bench_env["matmul_gflops"], 3),
    )
    bench.check("embed", arch, key, shape, timing)
