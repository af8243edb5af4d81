"""A stand-in model for the Index tests, whose `embed` is a bag of hand-placed word vectors, so
which documents each search side finds is known in advance: the dense side knows synonyms
("automobile" is "car") and nothing of unknown words ("zx81"); BM25 knows words and nothing of
synonyms. Shared by test_index_hybrid.py, test_index_storage.py and test_index_faults.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from fastlm.index import Index

DIM = 16
# word -> axis of its one-hot vector; synonyms share an axis
AXES = {
    "car": 0, "automobile": 0, "vehicle": 0, "bread": 1, "banana": 2, "weather": 3,
    "manual": 4, "sale": 5, "recipe": 6, "today": 7, "report": 8, "ship": 9, "sea": 10,
}  # fmt: skip


class BagModel:
    """Embeds a text as the normalised sum of its known words' one-hot vectors (a text of
    unknown words only: the zero vector, as the real models give for "")."""

    architecture = "bag"
    embedding_dim = DIM

    def __init__(self, name: str = "bag", digest: str = "a" * 64):
        self.name, self.embedding_digest = name, digest
        self.calls = 0

    def embed(self, texts, batch_size=64, show_progress_bar=None):
        self.calls += 1
        out = np.zeros((len(texts), DIM), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if word in AXES:
                    out[row, AXES[word]] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


DOCS = {
    "auto": "automobile",  # dense finds it for "car" (a synonym); BM25 cannot
    "code": "zx81 manual",  # BM25 finds it for "zx81"; the dense side knows no "zx81"
    "van": "vehicle bread",  # dense distractor
    "rumour": "zx81 rumours rumours rumours",  # lexical distractor (longer: lower BM25)
    "bake": "banana bread recipe",
    "news": "weather report today",
}
QUERY, RELEVANT = "car zx81", {"auto", "code"}


def corpus_index(**options) -> Index:
    return Index(BagModel(), **options).add(list(DOCS.values()), ids=list(DOCS))


def ids_of(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


def version_dir(path: Path) -> Path:
    """The directory the index pointer names: the files of the current save."""
    return path / json.loads((path / "manifest.json").read_text())["current"]


def random_unit(n: int, seed: int) -> np.ndarray:
    vecs = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


class TableModel(BagModel):
    """Embeds "doc N" as row N of a table (plus a little noise): queries with known answers."""

    def __init__(self, table: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.table = table

    def embed(self, texts, batch_size=64, show_progress_bar=None):
        self.calls += 1
        rows = [int(t.split()[1]) for t in texts]
        noise = np.random.default_rng(len(texts)).standard_normal((len(texts), DIM)) * 0.01
        vecs = self.table[rows] + noise.astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


# ---------------------------------------------------------------- saved-index fault tests
STUB_DIM = 8


class StubModel:
    """What Index needs of a model to save and load (no embed: nothing is embedded here)."""

    name = "stub"
    architecture = "stub"
    embedding_dim = STUB_DIM


def corpus(seed: int) -> tuple[np.ndarray, list[str]]:
    """One save's (vectors (n, STUB_DIM) float32, texts), both from `seed`; n varies with it."""
    n = 40 + seed % 37
    vecs = np.random.default_rng(seed).standard_normal((n, STUB_DIM)).astype(np.float32)
    return vecs, [f"{seed}:{i}" for i in range(n)]


def seed_of(index: Index) -> int:
    """The seed of a loaded index, after checking texts and vectors come from that one seed."""
    seed = int(index.texts[0].split(":")[0])
    vecs, texts = corpus(seed)
    assert index.texts == texts and np.array_equal(index.embeddings, vecs), f"mixed save {seed}"
    return seed


def save_stub_index(path: Path, seed: int) -> None:
    Index.from_embeddings(StubModel(), *corpus(seed)).save(path)


def forge(vdir: Path, name: str, data: bytes) -> None:
    """Replace one file of a saved version and its sha256 in that version's manifest: a
    self-consistent but hostile index, so the checks after the sha256 one are reached."""
    (vdir / name).write_bytes(data)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (vdir / "manifest.json").write_text(json.dumps(manifest))


def npy_header(shape, descr="<f4", fortran=False) -> bytes:
    """The bytes of an .npy header alone (no data)."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)  # magic string included
    return buf.getvalue()


def unblock_fifo_later(fifo: Path, after: float) -> None:
    """Open the FIFO's write end after `after` s, so a reader blocked on it gets EOF (a test of
    the old behaviour then fails on time instead of hanging forever)."""

    def run() -> None:
        time.sleep(after)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # nobody is blocked on it (or it is gone): nothing to unblock
            pass

    threading.Thread(target=run, daemon=True).start()
