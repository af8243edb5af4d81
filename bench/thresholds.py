"""Ratio gates for `pytest bench/`: the one place where the regression thresholds live.

A ratio is baseline time / candidate time, both measured in the same process, back to back
(so > 1 means faster than the baseline). Baselines: eager for `embed` and `decode`; the seed
pipeline (fixed order, batches of 32 padded to their longest, eager forward) for `e2e`; the
`tokenizers` library called directly for `tokenizer`. A gate fails when ratio < threshold.
Gates are enforced in full mode only (not with --benchmark-disable).

How the numbers were picked: measured ratios on the 2-core AMD EPYC CPU (threads=1 and 2,
the machine shared with other jobs) times ~0.75, since runs there differ by up to ~25%;
ONNX gates come from BASELINES.md's ORT timings until the ONNX backend lands (re-measure and
tighten then). A gate catches a regression that matters (a backend silently falling back to a
slow path, recompiling on every call, losing its quantisation); it does not certify a speed-up.

Keys are (suite, model, backend, shape); "*" matches anything. The most specific key wins.
"""

from __future__ import annotations

GATES: dict[tuple[str, str, str, str], float] = {
    # tokenizer: the fastlm wrapper costs < 10% over calling `tokenizers` directly
    ("tokenizer", "*", "fastlm", "*"): 0.91,
    # embed at fixed shapes, vs eager
    ("embed", "transformer", "compile", "32x64"): 0.8,
    ("embed", "transformer", "compile", "256x128"): 0.8,
    ("embed", "lstm", "compile", "*"): 0.75,  # the LSTM forward stays eager under "compile"
    ("embed", "lstm", "onnx-fp32", "32x64"): 1.0,
    ("embed", "lstm", "onnx-int8", "32x64"): 1.3,
    ("embed", "transformer", "onnx-int8", "32x64"): 1.1,
    ("embed", "*", "onnx-int8", "256x128"): 1.3,
    # decode ms/token, vs eager
    ("decode", "*", "compile", "*"): 0.8,
    # end to end: fastlm.embed on real paragraphs vs the seed pipeline
    ("e2e", "*", "eager", "*"): 2.0,
    ("e2e-best", "*", "*", "*"): 3.0,  # the target, with the best backend
}


def threshold(suite: str, model: str, backend: str, shape: str) -> float | None:
    """The gate for one measured ratio, or None when it is only reported."""
    best, best_wild = None, 5
    for key, value in GATES.items():
        fields = (suite, model, backend, shape)
        if all(k in ("*", f) for k, f in zip(key, fields)):
            wild = key.count("*")
            if wild < best_wild:
                best, best_wild = value, wild
    return best
