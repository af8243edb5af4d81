"""A realistic long-document corpus and helpers for bench/test_long_docs.py (the source text
also gives conftest.py its paragraphs).

Documents are runs of consecutive paragraphs of one text (`../shared/data/gutenberg_en/valid.txt`,
or Python's docstrings without `../shared`), cut to a target length drawn from a heavy-tailed
(log-normal) distribution: median ~450 tokens, ~5% over 1,500, a few over 3,000 — the shape of
real abstracts, reports and web pages, where one batch mixes short and very long texts.
"""

from __future__ import annotations

import math
import random
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MEDIAN_TOKENS = 450
# P(tokens > 1500) = 5%: ln(1500 / 450) = 1.645 sigma
SIGMA = math.log(1500 / MEDIAN_TOKENS) / 1.645
MAX_TOKENS = 4000  # below the Transformer's 5,000-position table (byte/token ratios vary)
BYTES_PER_TOKEN = 2.9  # the shipped tokenizer on gutenberg_en (README)


@dataclass
class Corpus:
    texts: list[str]
    source: str


def source_text() -> tuple[str, str]:
    path = SHARED_DATA / "gutenberg_en" / "valid.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8"), "../shared/data/gutenberg_en/valid.txt"
    from tools.benchmarking import docstring_corpus

    return docstring_corpus(), "Python docstrings"


def target_lengths(n: int, seed: int = 0, cap: int = MAX_TOKENS) -> list[int]:
    """n token counts from the log-normal above; max(3, 1%) of them forced past 3,000 when cap
    allows, so even ~100 documents hold "a few at 3,000+"."""
    rng = random.Random(seed)
    lengths = [
        min(cap, max(16, round(rng.lognormvariate(math.log(MEDIAN_TOKENS), SIGMA))))
        for _ in range(n)
    ]
    if cap > 3000:
        for i in rng.sample(range(n), min(n, max(3, n // 100))):
            lengths[i] = rng.randint(3000, cap)
    return lengths


def build_corpus(n: int, seed: int = 0, cap: int = MAX_TOKENS, tokenizer=None) -> Corpus:
    """n documents (caller order shuffled) with heavy-tailed lengths; see the module doc. With
    a fastlm `tokenizer`, each is cut to exactly its target token count (else by bytes)."""
    text, source = source_text()
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if p]
    rng = random.Random(seed + 1)
    docs = []
    for tokens in target_lengths(n, seed, cap):
        want = int(tokens * BYTES_PER_TOKEN)  # bytes; twice that before a token cut
        start, parts, size = rng.randrange(len(paras)), [], 0
        while size < 2 * want:  # wraps around a small fallback corpus
            p = paras[(start + len(parts)) % len(paras)]
            parts.append(p)
            size += len(p.encode("utf-8")) + 2
        doc = "\n\n".join(parts).encode("utf-8")[: want * 2].decode("utf-8", errors="ignore")
        if tokenizer is not None:
            doc = tokenizer.decode(tokenizer.encode(doc)[:tokens])
        else:
            doc = doc.encode("utf-8")[:want].decode("utf-8", errors="ignore")
        docs.append(doc)
    return Corpus(docs, source)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB (ru_maxrss is KB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
