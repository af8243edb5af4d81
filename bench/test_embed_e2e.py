"""End to end: `LanguageModel.embed` on real paragraphs vs the seed pipeline, texts/s.

The seed pipeline is the baseline fastlm is measured against: the texts in their given order,
batches of 32 padded to their longest, the eager model forward plus masked mean under
torch.no_grad, one host copy at the end. It is timed once per model per session (it does not
depend on the backend under test). fastlm sorts by length (little padding) and runs the
backend. Gates (bench/thresholds.py GATES, full mode): eager >= 1.6x the seed pipeline,
onnx-int8 >= 1.8x. The issue's target, the best backend >= 3x (TARGETS "e2e-best"), is reported
by test_embed_e2e_best_backend_report: a missed target never fails the run (figures that are
not finite and positive, or disagree with each other, do).
"""

from __future__ import annotations

import numpy as np
import pytest
from report_checks import check_best_row
from seed_pipeline import seed_pipeline

from tools.benchmarking import ARCHS, BACKENDS, median, timed

ROUNDS = 2  # one run of 2,000 paragraphs takes seconds


@pytest.fixture(scope="module")
def seed_seconds(lms, paragraphs, device, smoke):
    """seed_seconds(arch) -> median seconds of the seed pipeline over all paragraphs."""
    cache: dict[str, float] = {}

    def get(arch: str) -> float:
        if arch not in cache:
            eager = lms(arch, "eager")
            model, tok = eager.backend.checkpoint.embedder, eager.tokenizer

            def run():
                return seed_pipeline(model, tok, paragraphs.texts, device)

            head = paragraphs.texts[:64]  # same task, same answer (and a warm-up)
            ours = eager.embed(head, normalize=False, show_progress_bar=False)
            want = seed_pipeline(model, tok, head, device)
            if eager.backend.lexical is not None:  # embed() adds it; the seed had none
                want = eager.backend.lexical.mix(want, head)
            np.testing.assert_allclose(ours, want, atol=1e-4)
            cache[arch] = median([timed(run, device) for _ in range(1 if smoke else ROUNDS)])
        return cache[arch]

    return get


@pytest.mark.parametrize("key", list(BACKENDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_embed_e2e(bench, lms, paragraphs, seed_seconds, arch, key):
    lm = lms(arch, key)
    texts = paragraphs.texts
    lm.embed(texts[:64], show_progress_bar=False)  # warm-up on a slice: a full run takes seconds
    seed = seed_seconds(arch)
    timing = bench.run(lambda: lm.embed(texts, show_progress_bar=False), None, ROUNDS, 0)
    n_tokens = sum(len(s) for s in lm.tokenizer.encode_many(texts))
    bench.describe(
        "e2e",
        arch,
        key,
        texts=len(texts),
        tokens=n_tokens,
        corpus=paragraphs.source,
        batch_size=64,
        texts_per_s=round(len(texts) / timing.seconds, 1),
        seed_texts_per_s=round(len(texts) / seed, 1),
        tokens_per_s=round(n_tokens / timing.seconds),
    )
    bench.check("e2e", arch, key, f"{len(texts)} texts", timing, "seed", baseline_seconds=seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_embed_e2e_best_backend_report(gates, arch):
    """Reports whether the best backend measured in this session meets the end-to-end target
    over the seed pipeline (TARGETS "e2e-best"): a missed target never fails, unsound figures do
    (check_best_row). Skips when no e2e case ran."""
    best = gates.apply_best("e2e", arch, "e2e-best")
    check_best_row(best, gates.rows("e2e", arch))
