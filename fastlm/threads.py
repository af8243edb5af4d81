"""`torch_threads`: torch's intra-op thread count for one block of calls, never left changed.

torch's count is process-wide (`torch.set_num_threads`), so a model that set it at load time
would change every other model and library in the process. Backends with a `threads=` option
and the export's parity check run their calls inside this block instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block and restored after it
    (None: left alone). Blocks that set a count run one at a time (the count is process-wide);
    calls that set none are not held up."""
    if threads is None:
        yield
        return
    with _LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
