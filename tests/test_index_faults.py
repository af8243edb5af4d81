"""Index.save / Index.load under faults: foreign directories, readers racing writers, kill -9 at
any point of a save, special or hostile files, array-like constructor input.

The index here holds a stand-in model (no weights): Index only reads `name`, `architecture` and
`embedding_dim` to save and load. Each save's texts and vectors derive from one seed, so a load
that pairs one save's texts with another's vectors is visible.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from index_helpers import version_dir

import fastlm.index.core as index_mod
from fastlm.index import Index, IndexFileError

DIM = 8


class StubModel:
    """What Index needs of a model to save and load (no embed: nothing is embedded here)."""

    name = "stub"
    architecture = "stub"
    embedding_dim = DIM


def corpus(seed: int) -> tuple[np.ndarray, list[str]]:
    """One save's (vectors (n, DIM) float32, texts), both from `seed`; n varies with the seed."""
    n = 40 + seed % 37
    vecs = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vecs, [f"{seed}:{i}" for i in range(n)]


def seed_of(index: Index) -> int:
    """The seed of a loaded index, after checking texts and vectors come from that one seed."""
    seed = int(index.texts[0].split(":")[0])
    vecs, texts = corpus(seed)
    assert index.texts == texts and np.array_equal(index.embeddings, vecs), f"mixed save {seed}"
    return seed


def save(path: Path, seed: int) -> None:
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
    import io

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


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "idx"
    save(path, 1)
    return path


# ------------------------------------------------------------ a foreign directory is never replaced
@pytest.mark.parametrize("fmt", ["fastlm-onnx/2", "fastlm-checkpoint/1", None])
def test_save_never_replaces_a_directory_with_another_manifest(tmp_path, fmt):
    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text(json.dumps({"format": fmt, "files": {}}))
    (target / "model.onnx").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError, match=f"{re.escape(str(target))}.*not a fastlm index"):
        save(target, 1)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_save_refuses_a_fifo_manifest_without_blocking(tmp_path):
    target = tmp_path / "odd"
    target.mkdir()
    os.mkfifo(target / "manifest.json")
    unblock_fifo_later(target / "manifest.json", 3.0)
    start = time.monotonic()
    with pytest.raises(FileExistsError, match="not a fastlm index"):
        save(target, 1)
    assert time.monotonic() - start < 1.5


def test_save_refuses_a_file_and_accepts_an_empty_or_new_directory(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="not a fastlm index"):
        save(tmp_path / "file", 1)
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty", 2)
    save(tmp_path / "new" / "nested", 3)
    assert seed_of(Index.load(tmp_path / "empty", StubModel())) == 2
    assert seed_of(Index.load(tmp_path / "new" / "nested", StubModel())) == 3


# ------------------------------------------------------------ readers and writers at once
def test_a_reader_keeps_its_version_through_one_save(saved, monkeypatch):
    """The version a reader resolved survives the next save (each save keeps the previous one)."""
    real, calls = index_mod._read_version, []

    def one_save_meanwhile(*args, **kwargs):
        if not calls:
            save(saved, 2)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_read_version", one_save_meanwhile)
    assert seed_of(Index.load(saved, StubModel())) == 1 and len(calls) == 1


def test_a_reader_whose_version_is_removed_reads_the_new_one(saved, monkeypatch):
    """Two saves while a reader holds a resolved version remove it: the reader resolves again."""
    real, calls = index_mod._read_version, []

    def two_saves_meanwhile(*args, **kwargs):
        if not calls:
            save(saved, 2)
            save(saved, 3)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_read_version", two_saves_meanwhile)
    assert seed_of(Index.load(saved, StubModel())) == 3 and len(calls) == 2


# Subprocess drivers fork their savers and readers from one interpreter (one import of fastlm);
# they share the stand-in model and corpus above through their source.
_PRELUDE = "\n".join(
    [
        "import json, os, random, signal, sys, time",
        "import numpy as np",
        "from fastlm.index import Index",
        f"DIM = {DIM}",
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


# ------------------------------------------------------------ special and hostile files
def _deep_json() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: os.mkfifo(p), id="fifo"),
        pytest.param(lambda p: os.symlink("/dev/zero", p), id="dev_zero"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: p.write_bytes(_deep_json()), id="deep_json"),
        pytest.param(lambda p: p.write_bytes(b" " * (2 << 20) + b"{}"), id="oversized"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe"), id="not_utf8"),
    ],
)
@pytest.mark.parametrize("where", ["pointer", "version"])
def test_hostile_manifest_is_an_index_file_error(saved, make, where):
    target = saved / "manifest.json" if where == "pointer" else version_dir(saved) / "manifest.json"
    target.unlink()
    make(target)
    if target.is_fifo():
        unblock_fifo_later(target, 3.0)
    start = time.monotonic()
    with pytest.raises(IndexFileError, match=re.escape(str(target))):
        Index.load(saved, StubModel())
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("index.json", _deep_json(), "is corrupt"),
        ("index.json", b'{"texts": "abc"}', "texts"),
        ("index.json", b"[]", "texts"),
        ("embeddings.npy", b"", "npy"),
        ("embeddings.npy", b"not an npy file at all", "npy"),
        ("embeddings.npy", npy_header((10**10, DIM)), "shape"),
        ("embeddings.npy", npy_header((10**10, 256)), "shape"),
        ("embeddings.npy", npy_header((41, DIM), descr="<f8"), "float32"),
        ("embeddings.npy", npy_header((41, DIM), fortran=True), "order"),
        ("embeddings.npy", npy_header((41, DIM)) + b"\0" * 12, "size"),
        ("embeddings.npy", npy_header((41, DIM), descr="|O"), "float32"),
    ],
)
def test_forged_version_file_is_an_index_file_error(saved, name, data, fragment):
    """Files whose sha256 matches a forged manifest are still checked (type, size, shape) before
    anything is allocated. corpus(1) has 41 rows."""
    vdir = version_dir(saved)
    forge(vdir, name, data)
    with pytest.raises(IndexFileError, match=re.escape(str(vdir / name))) as err:
        Index.load(saved, StubModel())
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["index.json", "embeddings.npy"])
def test_special_version_file_is_an_index_file_error(saved, name):
    target = version_dir(saved) / name
    target.unlink()
    os.mkfifo(target)
    unblock_fifo_later(target, 3.0)
    start = time.monotonic()
    with pytest.raises(IndexFileError, match=re.escape(str(target))):
        Index.load(saved, StubModel())
    assert time.monotonic() - start < 1.5


def test_pointer_outside_the_index_is_refused(saved):
    (saved / "manifest.json").write_text(json.dumps({"format": "fastlm-index/2", "current": ".."}))
    with pytest.raises(IndexFileError, match="manifest.json"):
        Index.load(saved, StubModel())


def test_manifest_listing_a_path_outside_the_version_is_refused(saved):
    vdir = version_dir(saved)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["../index.json"] = manifest["files"].pop("index.json")
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="manifest.json"):
        Index.load(saved, StubModel())


def test_a_fastlm_index_1_directory_loads_and_a_save_upgrades_it(tmp_path):
    """The previous on-disk format (files directly in DIR) is still read."""
    path = tmp_path / "old"
    path.mkdir()
    vecs, texts = corpus(5)
    np.save(path / "embeddings.npy", vecs)
    meta = {"model": "stub", "architecture": "stub", "dim": DIM, "texts": texts}
    (path / "index.json").write_text(json.dumps(meta))
    files = {
        n: hashlib.sha256((path / n).read_bytes()).hexdigest()
        for n in ("embeddings.npy", "index.json")
    }
    (path / "manifest.json").write_text(json.dumps({"format": "fastlm-index/1", "files": files}))
    assert seed_of(Index.load(path, StubModel())) == 5
    save(path, 6)
    assert seed_of(Index.load(path, StubModel())) == 6
    save(path, 7)  # the old files are the previous version until this save
    assert seed_of(Index.load(path, StubModel())) == 7
    assert not (path / "embeddings.npy").exists() and not (path / "index.json").exists()


# ------------------------------------------------------------ constructor input
def test_constructor_accepts_array_likes():
    index = Index.from_embeddings(StubModel(), [[0.5] * DIM, [1] * DIM], ["a", "b"])
    assert index.embeddings.dtype == np.float32 and index.embeddings.shape == (2, DIM)
    assert Index.from_embeddings(StubModel(), [], []).embeddings.shape == (0, DIM)
    one = Index.from_embeddings(StubModel(), np.ones((1, DIM)), ("a",))
    assert one.embeddings.dtype == np.float32
    two = Index.from_embeddings(StubModel(), np.ones((2, DIM)), np.array(["a", "b"]))
    assert two.texts == ["a", "b"]


@pytest.mark.parametrize(
    ("embeddings", "texts", "error", "fragment"),
    [
        ([0.0] * DIM, ["a"], ValueError, "shape"),
        ([[0.0] * 3], ["a"], ValueError, "shape"),
        ([[0.0] * DIM], ["a", "b"], ValueError, "shape"),
        ([[0.0] * DIM, [0.0]], ["a", "b"], ValueError, "embeddings"),
        ([["x"] * DIM], ["a"], TypeError, "embeddings"),
        ([[float("nan")] * DIM], ["a"], ValueError, "NaN"),
        ("abc", ["a"], TypeError, "embeddings"),
        ([[0.0] * DIM], [3], TypeError, "texts[0]"),
        ([[0.0] * DIM], "a", TypeError, "list of str"),
    ],
)
def test_constructor_refuses_bad_input(embeddings, texts, error, fragment):
    with pytest.raises(error) as err:
        Index.from_embeddings(StubModel(), embeddings, texts)
    assert fragment in str(err.value)
