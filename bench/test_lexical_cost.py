"""What the lexical branch adds to `embed()`: the same texts embedded with the branch and with it
switched off, same process, back to back (ratio = seconds without / seconds with, so 1.0 means
free). The branch is numpy on every backend, so its share is largest on the fastest one.
Gate (bench/thresholds.py, full mode): ("lexical", *, *, *)."""

from __future__ import annotations

import pytest

from tools.benchmarking import ARCHS

ROUNDS = 3


@pytest.mark.parametrize("key", ["eager", "onnx-int8"])
@pytest.mark.parametrize("arch", ARCHS)
def test_lexical_branch_cost(bench, lms, paragraphs, arch, key):
    lm = lms(arch, key)
    branch = lm.backend.lexical
    assert branch is not None, f"{arch} ships no lexical branch"
    texts = paragraphs.texts

    def without():
        lm.backend.lexical = None
        try:
            lm.embed(texts, show_progress_bar=False)
        finally:
            lm.backend.lexical = branch

    lm.embed(texts[:64], show_progress_bar=False)  # warm-up
    timing = bench.run(lambda: lm.embed(texts, show_progress_bar=False), without, ROUNDS, 0)
    bench.describe("lexical", arch, key, texts=len(texts), corpus=paragraphs.source)
    bench.check("lexical", arch, key, f"{len(texts)} texts", timing, "branch off")
