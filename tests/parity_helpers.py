"""Helpers shared by the parity tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

# texts the backends' parity tests embed and score: one character, a sentence, a long run of
# one word, the empty text, non-ASCII with an emoji, short words repeated
PARITY_TEXTS = ["a", "the cat sat on the mat", "word " * 70, "", "Ünïcödé 🤖 text", "x y z " * 9]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row of (n, d) arrays: 1 where both rows are all zeros (an empty text on both
    sides), 0 where only one is (a backend that lost a row never matches)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    out = np.where((na == 0) & (nb == 0), 1.0, 0.0)
    out[ok] = (a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])
    return out


def run_in_threads(work: Callable[[], object], n: int = 8) -> list:
    """Call `work` from n threads at once; return their results, re-raising the first error."""
    results, errors = [None] * n, []

    def run(k: int) -> None:
        try:
            results[k] = work()
        except Exception as err:  # re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
