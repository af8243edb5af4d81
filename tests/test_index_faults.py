"""Index.save / Index.load under faults: foreign directories, readers racing writers, kill -9 at
any point of a save (special or hostile files and constructor input: test_index_hostile.py).

The index here holds a stand-in model (no weights): Index only reads `name`, `architecture` and
`embedding_dim` to save and load. Each save's texts and vectors derive from one seed, so a load
that pairs one save's texts with another's vectors is visible.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from index_helpers import (
    STUB_DIM,
    StubModel,
    corpus,
    save_stub_index,
    seed_of,
    unblock_fifo_later,
)

import fastlm.index.core as index_mod
from fastlm.index import Index


# ------------------------------------------------------------ a foreign directory is never replaced
@pytest.mark.parametrize("fmt", ["fastlm-onnx/2", "fastlm-checkpoint/1", None])
def test_save_never_replaces_a_directory_with_another_manifest(tmp_path, fmt):
    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text(json.dumps({"format": fmt, "files": {}}))
    (target / "model.onnx").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError, match=f"{re.escape(str(target))}.*not a fastlm index"):
        save_stub_index(target, 1)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_save_refuses_a_fifo_manifest_without_blocking(tmp_path):
    target = tmp_path / "odd"
    target.mkdir()
    os.mkfifo(target / "manifest.json")
    unblock_fifo_later(target / "manifest.json", 3.0)
    start = time.monotonic()
    with pytest.raises(FileExistsError, match="not a fastlm index"):
        save_stub_index(target, 1)
    assert time.monotonic() - start < 1.5


def test_save_refuses_a_file_and_accepts_an_empty_or_new_directory(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not a fastlm index"):
        save_stub_index(tmp_path / "file", 1)
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    save_stub_index(tmp_path / "empty", 2)
    save_stub_index(tmp_path / "new" / "nested", 3)
    assert seed_of(Index.load(tmp_path / "empty", StubModel())) == 2
    assert seed_of(Index.load(tmp_path / "new" / "nested", StubModel())) == 3


# ------------------------------------------------------------ readers and writers at once
def test_a_reader_keeps_its_version_through_one_save(saved_index, monkeypatch):
    """The version a reader resolved survives the next save (each save keeps the previous one)."""
    real, calls = index_mod._read_version, []

    def one_save_meanwhile(*args, **kwargs):
        if not calls:
            save_stub_index(saved_index, 2)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_read_version", one_save_meanwhile)
    assert seed_of(Index.load(saved_index, StubModel())) == 1 and len(calls) == 1


def test_a_reader_whose_version_is_removed_reads_the_new_one(saved_index, monkeypatch):
    """Two saves while a reader holds a resolved version remove it: the reader resolves again."""
    real, calls = index_mod._read_version, []

    def two_saves_meanwhile(*args, **kwargs):
        if not calls:
            save_stub_index(saved_index, 2)
            save_stub_index(saved_index, 3)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_read_version", two_saves_meanwhile)
    assert seed_of(Index.load(saved_index, StubModel())) == 3 and len(calls) == 2


# Subprocess drivers fork their savers and readers from one interpreter (one import of fastlm);
# they share the stand-in model and corpus of index_helpers through their source.
_PRELUDE = "\n".join(
    [
        "import json, os, random, signal, sys, time",
        "import numpy as np",
        "from fastlm.index import Index",
        f"STUB_DIM = {STUB_DIM}",
        inspect.getsource(StubModel),
        inspect.getsource(corpus),
    ]
)

_CHAOS = """
def fork(fn, *args):
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(0)
    return pid

def saver(path, worker):
    for k in range(1, 10**9):
        try:
            Index.from_embeddings(StubModel(), *corpus(worker * 1_000_000 + k)).save(path)
        except Exception as err:
            print("SAVER-ERROR", repr(err)[:300], file=sys.stderr, flush=True)

def reader(path, deadline, out):
    counts = {"ok": 0, "mixed": 0, "failed": 0, "errors": []}
    while time.monotonic() < deadline:
        try:
            index = Index.load(path, StubModel())
        except Exception as err:
            counts["failed"] += 1
            counts["errors"] = (counts["errors"] + [repr(err)[:300]])[:5]
            continue
        vecs, texts = corpus(int(index.texts[0].split(":")[0]))
        same = index.texts == texts and np.array_equal(index.embeddings, vecs)
        counts["ok" if same else "mixed"] += 1
    with open(out, "w") as f:
        json.dump(counts, f)

path, results, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
n_savers, n_readers = 3, 2
Index.from_embeddings(StubModel(), *corpus(0)).save(path)
deadline = time.monotonic() + seconds
readers = [fork(reader, path, deadline, f"{results}/{i}.json") for i in range(n_readers)]
savers = [fork(saver, path, w) for w in range(1, n_savers + 1)]
rng, kills = random.Random(0), 0
while time.monotonic() < deadline:
    time.sleep(rng.uniform(0.02, 0.15))
    i = rng.randrange(n_savers)
    os.kill(savers[i], signal.SIGKILL)
    os.waitpid(savers[i], 0)
    kills += 1
    savers[i] = fork(saver, path, 1 + i + n_savers * kills)
for pid in savers:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
for pid in readers:
    os.waitpid(pid, 0)
final = Index.load(path, StubModel())
vecs, texts = corpus(int(final.texts[0].split(":")[0]))
final_ok = final.texts == texts and np.array_equal(final.embeddings, vecs)
Index.from_embeddings(StubModel(), *corpus(10**9)).save(path)
print(json.dumps({
    "kills": kills,
    "readers": [json.load(open(f"{results}/{i}.json")) for i in range(n_readers)],
    "final_ok": final_ok,
    "after_save": sorted(os.listdir(path)),
}))
"""


def run_driver(tmp_path: Path, body: str, *args: str, timeout: float) -> dict:
    script = tmp_path / "driver.py"
    script.write_text(_PRELUDE + "\n" + textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SAVER-ERROR" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_clean(listing: list[str]) -> None:
    """After a complete save: the pointer, the lock, the new version and at most the previous."""
    rest = [n for n in listing if n not in ("manifest.json", ".fastlm-index.lock")]
    assert len(rest) <= 2 and all(re.fullmatch(r"v\d+", n) for n in rest), listing


@pytest.mark.slow
def test_chaos_savers_killed_at_random_while_readers_load(tmp_path):
    """3 savers (killed -9 at random) and 2 readers on one directory for 5 s: every load is one
    complete save, none fails, and the last save leaves nothing of the killed ones behind."""
    (tmp_path / "results").mkdir()
    out = run_driver(
        tmp_path, _CHAOS, str(tmp_path / "idx"), str(tmp_path / "results"), "5", timeout=60
    )
    loads = [r["ok"] + r["mixed"] + r["failed"] for r in out["readers"]]
    assert out["kills"] >= 10 and min(loads) >= 20, out
    assert [r["mixed"] for r in out["readers"]] == [0, 0], out
    assert [r["failed"] for r in out["readers"]] == [0, 0], out
    assert out["final_ok"], out
    assert_clean(out["after_save"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "idx", "results"]


# ------------------------------------------------------------ kill -9 at every point of a save
_KILL_EACH_STEP = """
def killing_at(step):
    # audit hook: the process dies before its step-th file-system operation, like a kill -9
    count = [0]
    def hook(event, args):
        if event == "open" or event.startswith(("os.", "shutil.", "fcntl.")):
            count[0] += 1
            if count[0] == step:
                os._exit(137)
    return hook

path = sys.argv[1]
Index.from_embeddings(StubModel(), *corpus(0)).save(path)
current, failures, step = 0, [], 0
while step < 1000:
    step += 1
    pid = os.fork()
    if pid == 0:
        sys.addaudithook(killing_at(step))
        Index.from_embeddings(StubModel(), *corpus(step)).save(path)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    try:
        index = Index.load(path, StubModel())
        seen = int(index.texts[0].split(":")[0])
        vecs, texts = corpus(seen)
        if not (index.texts == texts and np.array_equal(index.embeddings, vecs)):
            failures.append((step, "mixed"))
        elif seen not in (current, step):
            failures.append((step, f"saw {seen}, expected {current} or {step}"))
        current = seen
    except Exception as err:
        failures.append((step, repr(err)[:300]))
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        break  # this save ran to its end: every earlier step was a kill point
print(json.dumps({"steps": step, "current": current, "failures": failures[:10],
                  "after_save": sorted(os.listdir(path))}))
"""


@pytest.mark.slow
def test_kill_at_every_step_of_a_save_leaves_the_last_complete_index(tmp_path):
    """A save killed before each of its file-system operations in turn: the index always loads,
    as the previous save or the killed one, and the save that completes removes the leftovers."""
    out = run_driver(tmp_path, _KILL_EACH_STEP, str(tmp_path / "idx"), timeout=120)
    assert out["failures"] == [], out
    assert 5 < out["steps"] < 1000 and out["current"] == out["steps"], out
    assert_clean(out["after_save"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "idx"]
