"""The server's dynamic batcher without HTTP: token budget, window, order, failure isolation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastlm.serve.batcher import EmbedBatcher


class FakeModel:
    """embed(texts) -> (n, 2): [len(text), call number]; records each call's texts."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.kinds: list[str] = []
        self.fail_on = fail_on

    def __call__(self, texts, kind="document"):
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("poisoned batch")
        self.calls.append(list(texts))
        self.kinds.append(kind)
        return np.array([[len(t), len(self.calls)] for t in texts], dtype=np.float32)


async def _run(batcher: EmbedBatcher, jobs: list[tuple[list[str], int]]):
    batcher.start()
    try:
        return await asyncio.gather(
            *(batcher.embed(texts, tokens) for texts, tokens in jobs), return_exceptions=True
        )
    finally:
        await batcher.stop()


def test_jobs_in_one_window_share_a_batch_within_the_token_budget():
    model = FakeModel()
    jobs = [([f"t{i}" * (i + 1)], 4) for i in range(10)]  # 10 jobs x 4 tokens, budget 10
    out = asyncio.run(_run(EmbedBatcher(model, window_s=0.05, max_batch_tokens=10), jobs))
    assert [len(c) for c in model.calls] == [2, 2, 2, 2, 2]  # 2 jobs (8 tokens) per batch
    for (texts, _), res in zip(jobs, out):  # every job gets its own rows back
        assert res[:, 0].tolist() == [len(t) for t in texts]


def test_a_job_over_the_budget_runs_alone():
    model = FakeModel()
    jobs = [(["a"], 1), (["b" * 50, "c"], 50), (["d"], 1)]
    out = asyncio.run(_run(EmbedBatcher(model, window_s=0.05, max_batch_tokens=10), jobs))
    assert ["b" * 50, "c"] in model.calls
    assert [r.shape[0] for r in out] == [1, 2, 1]


def test_zero_window_still_answers_everything():
    model = FakeModel()
    jobs = [([str(i)], 1) for i in range(20)]
    out = asyncio.run(_run(EmbedBatcher(model, window_s=0.0, max_batch_tokens=1000), jobs))
    assert sum(len(c) for c in model.calls) == 20 and all(r.shape == (1, 2) for r in out)


def test_a_failing_job_fails_alone():
    model = FakeModel(fail_on="bad")
    jobs = [(["ok1"], 1), (["bad"], 1), (["ok2", "ok3"], 2)]
    out = asyncio.run(_run(EmbedBatcher(model, window_s=0.05, max_batch_tokens=100), jobs))
    assert isinstance(out[1], RuntimeError)
    assert out[0][:, 0].tolist() == [3] and out[2][:, 0].tolist() == [3, 3]


def test_a_batch_holds_one_kind():
    model = FakeModel()
    kinds = ["document", "query", "query", "document", "query", "document"]

    async def run():
        batcher = EmbedBatcher(model, window_s=0.05, max_batch_tokens=100)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.embed([f"{k}{i}"], 1, k) for i, k in enumerate(kinds))
            )
        finally:
            await batcher.stop()

    out = asyncio.run(run())
    for texts, kind in zip(model.calls, model.kinds):
        assert all(t.startswith(kind) for t in texts)  # never a query among documents
    for i, (k, res) in enumerate(zip(kinds, out)):
        call = int(res[0, 1]) - 1  # the call that embedded this job
        assert model.kinds[call] == k and f"{k}{i}" in model.calls[call]
    assert sum(len(c) for c in model.calls) == len(kinds)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        EmbedBatcher(FakeModel(), window_s=-1)
    with pytest.raises(ValueError):
        EmbedBatcher(FakeModel(), max_batch_tokens=0)
