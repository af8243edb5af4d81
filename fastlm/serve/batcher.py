"""Dynamic batching for the server: many small embedding requests -> few large `embed` calls.

One asyncio task takes jobs (the texts of one request) from a queue and groups them: a batch
closes when its token count would exceed `max_batch_tokens`, or `window_s` after its first
job arrived. Under load the queue fills while the previous batch runs, so batches close at
once on the token budget and the window adds no latency; at low load a lone request waits at
most `window_s`. The model runs in one worker thread (a model is one set of weights and
threads: two batches at once would only contend for the same cores), so the event loop keeps
answering other requests meanwhile.

A batch that fails is retried job by job, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("fastlm.serve")


@dataclass
class _Job:
    texts: list[str]
    tokens: int
    future: asyncio.Future
    kind: str = "document"  # a batch holds one kind: documents or queries
    arrived: float = field(default_factory=time.monotonic)


class EmbedBatcher:
    """`await batcher.embed(texts, tokens, kind)` -> (len(texts), D) float32, batched with
    others of the same kind ("document" or "query").

    embed_fn(texts, kind) -> (n, D) float32 runs in the batcher's worker thread.
    """

    def __init__(
        self,
        embed_fn: Callable[[Sequence[str], str], np.ndarray],
        window_s: float = 0.005,
        max_batch_tokens: int = 16384,
    ):
        if window_s < 0 or max_batch_tokens < 1:
            raise ValueError("window_s must be >= 0 and max_batch_tokens >= 1")
        self.embed_fn = embed_fn
        self.window_s = window_s
        self.max_batch_tokens = max_batch_tokens
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="fastlm-embed")
        self.batches = 0  # batches run so far (for /health and tests)
        self.texts = 0
        self.busy_seconds = 0.0  # time the model spent on batches (utilisation = busy / wall)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._carry: _Job | None = None  # a job that did not fit the previous batch
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the queued jobs, then stop the loop and the worker thread."""
        while self._carry is not None or not self._queue.empty():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def embed(self, texts: list[str], tokens: int, kind: str = "document") -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(texts, tokens, future, kind))
        return await future

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._execute(batch)

    async def _next_job(self, timeout: float | None) -> _Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return None

    async def _collect(self) -> list[_Job]:
        first = await self._next_job(None)
        batch, tokens = [first], first.tokens
        deadline = first.arrived + self.window_s
        while tokens < self.max_batch_tokens:
            job = await self._next_job(deadline - time.monotonic())
            if job is None:
                break
            if tokens + job.tokens > self.max_batch_tokens or job.kind != first.kind:
                self._carry = job  # first in the next batch
                break
            batch.append(job)
            tokens += job.tokens
        return [j for j in batch if not j.future.done()]  # drop requests already cancelled

    async def _execute(self, batch: list[_Job]) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        texts = [t for job in batch for t in job.texts]
        start = time.perf_counter()
        try:
            vecs = await loop.run_in_executor(self.executor, self.embed_fn, texts, batch[0].kind)
        except Exception:  # one job may be at fault: retry each alone, keep the others
            if len(batch) > 1:
                for job in batch:
                    await self._execute([job])
                return
            log.exception("embedding failed")
            _settle(batch[0].future, exc=RuntimeError("embedding failed"))
            return
        self.batches += 1
        self.texts += len(texts)
        self.busy_seconds += time.perf_counter() - start
        start = 0
        for job in batch:
            _settle(job.future, result=vecs[start : start + len(job.texts)])
            start += len(job.texts)


def _settle(future: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if future.done():  # the client went away meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
