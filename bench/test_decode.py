"""Single-stream greedy decode, ms/token: a 16-token prompt, then 128 new tokens.

Timed through each backend's decoder (1 prefill + 127 steps, argmax), never stopping at
<|endoftext|>, so every backend does the same work whatever its weights. Gate: vs eager. The
fp32 backends (FP32_EXACT) must also pick eager's tokens: the same argmax at fp32 precision.
"""

from __future__ import annotations

import pytest

from tools.benchmarking import ARCHS, BACKENDS, decode_flops, greedy_decode, random_batch

PROMPT, NEW = 16, 128
ROUNDS, WARMUP = 5, 1
FP32_EXACT = ("compile", "onnx-fp32")  # fp16/int8 (and Triton's kernels) may flip near-ties


@pytest.mark.parametrize("key", list(BACKENDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_decode(bench, lms, arch, key):
    lm, eager = lms(arch, key), lms(arch, "eager")
    prompt = random_batch(1, PROMPT, lm.info.vocab_size, seed=1)[0][0].tolist()
    candidate = lambda: greedy_decode(lm.backend, prompt, NEW)  # noqa: E731
    baseline = (lambda: greedy_decode(eager.backend, prompt, NEW)) if key != "eager" else None
    timing = bench.run(candidate, baseline, ROUNDS, WARMUP)
    same_tokens = candidate() == greedy_decode(eager.backend, prompt, NEW)
    if key in FP32_EXACT:
        assert same_tokens, f"{arch}/{key}: greedy tokens differ from eager's"
    flops = decode_flops(eager.backend.model, PROMPT, NEW)
    bench.describe(
        "decode",
        arch,
        key,
        prompt_tokens=PROMPT,
        new_tokens=NEW,
        batch=1,
        ms_per_token=round(1000 * timing.seconds / NEW, 4),
        tokens_per_s=round(NEW / timing.seconds, 1),
        gflops=round(flops / timing.seconds / 1e9, 2),
        same_tokens_as_eager=same_tokens,
    )
    bench.check("decode", arch, key, f"{PROMPT}+{NEW}", timing)
