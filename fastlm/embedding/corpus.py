"""Sentences and passages from plain-text books, for distilling a sentence-embedding teacher.

Paragraphs are blocks separated by blank lines, their lines joined by spaces. A passage is a whole
paragraph; a sentence is cut from a paragraph at ". ", "! ", "? " (plus closing quotes). Both are
kept when they have 5-250 words; the rest are counted as skipped, never silently lost.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIN_WORDS, MAX_WORDS = 5, 250
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)]))\s+(?=[\"'\u201c\u2018(]?[A-Z])"
)


@dataclass
class CorpusStats:
    paragraphs: int = 0
    skipped_short: int = 0
    skipped_long: int = 0
    kept: dict = field(default_factory=lambda: {"sentence": 0, "passage": 0})


def paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Blank-line separated blocks, whitespace collapsed to single spaces."""
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _fits(text: str, stats: CorpusStats) -> bool:
    n = len(text.split())
    if n < MIN_WORDS:
        stats.skipped_short += 1
        return False
    if n > MAX_WORDS:
        stats.skipped_long += 1
        return False
    return True


def extract_texts(
    paths: Iterable[str | Path],
    n_sentences: int,
    n_passages: int,
    seed: int = 0,
) -> tuple[list[str], CorpusStats]:
    """Up to n_sentences sentences + n_passages passages (5-250 words each), sampled uniformly
    over the files' paragraphs with `seed`, deduplicated, in a seeded random order."""
    stats = CorpusStats()
    sentences: set[str] = set()
    passages: set[str] = set()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for para in paragraphs(f):
                stats.paragraphs += 1
                if _fits(para, stats):
                    passages.add(para)
                for s in split_sentences(para):
                    if _fits(s, stats):
                        sentences.add(s)
    rng = random.Random(seed)
    sent = rng.sample(sorted(sentences), min(n_sentences, len(sentences)))
    pool = sorted(passages - set(sent))
    pas = rng.sample(pool, min(n_passages, len(pool)))
    stats.kept = {"sentence": len(sent), "passage": len(pas)}
    texts = sent + pas
    rng.shuffle(texts)
    return texts, stats


def cloze_pairs(
    paths: Iterable[str | Path], n_pairs: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Inverse-cloze pairs (Lee et al. 2019): (one sentence of a paragraph, the paragraph without
    it), from paragraphs of >= 3 sentences and 30-250 words; up to n_pairs, seeded."""
    rng = random.Random(seed)
    sources = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for para in paragraphs(f):
                if 30 <= len(para.split()) <= MAX_WORDS:
                    sources.append(para)
    rng.shuffle(sources)
    queries, contexts = [], []
    for para in sources:
        sents = split_sentences(para)
        candidates = [i for i, s in enumerate(sents) if len(s.split()) >= MIN_WORDS]
        if len(sents) < 3 or not candidates:
            continue
        i = rng.choice(candidates)
        queries.append(sents[i])
        contexts.append(" ".join(sents[:i] + sents[i + 1 :]))
        if len(queries) == n_pairs:
            break
    return queries, contexts
