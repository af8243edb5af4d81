"""The `fastlm` command as users run it: a real process, its exit code and its stderr.

Exit codes: 0 ok, 1 error, 2 usage error, 130 interrupted; an error is one line on stderr.
Each process runs the installed `fastlm` console script beside this Python (else `python -m
fastlm`, the same `fastlm.cli:main`) with this checkout first on the path.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("fastlm")
FASTLM = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastlm"]
SUBCOMMANDS = (
    "train",
    "eval",
    "embed",
    "generate",
    "score",
    "serve",
    "export",
    "evaluate",
)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(*args: str, stdin: str | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the command; `prelude` is Python run first (e.g. to hide an installed extra)."""
    if prelude:
        cmd = [
            sys.executable,
            "-c",
            f"{prelude}\nimport sys\nfrom fastlm.cli import main\n"
            "sys.argv[0] = 'fastlm'\nsys.exit(main())",
            *args,
        ]
    else:
        cmd = [*FASTLM, *args]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT
    )


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    """Assert exit `code` and a single `fastlm ...: error: ...` line on stderr; return it."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("fastlm") and "error: " in lines[0] and "Traceback" not in lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- help / version
def test_version_and_every_subcommand_listed():
    from fastlm import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fastlm {__version__}"
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in proc.stdout, name


HIDE = "import sys\nfor m in {mods}: sys.modules[m] = None  # as if not installed"


def test_subcommands_stay_listed_without_extras_and_name_the_extra():
    hide = HIDE.format(mods=["fastapi", "uvicorn", "onnxruntime", "onnx", "matplotlib"])
    proc = run_cli("--help", prelude=hide)
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in proc.stdout, name
    assert run_cli("export", "--help", prelude=hide).returncode == 0
    line = one_line_error(run_cli("serve", "transformer", prelude=hide), 1)
    assert 'pip install "fastlm[serve]"' in line


def test_onnx_backend_without_onnxruntime_names_the_extra():
    hide = HIDE.format(mods=["onnxruntime"])
    proc = run_cli("embed", "hi", "--backend", "onnx", "--threads", "1", prelude=hide)
    assert 'pip install "fastlm[onnx]"' in one_line_error(proc, 1)


# ----------------------------------------------------------------------------- usage errors
def test_bogus_device_is_a_one_line_usage_error():
    line = one_line_error(run_cli("embed", "hi", "--device", "bogus"), 2)
    assert "unknown device 'bogus'" in line


def test_negative_threads_is_a_one_line_usage_error():
    line = one_line_error(run_cli("embed", "hi", "--threads", "-1"), 2)
    assert "--threads" in line and ">= 1" in line


def test_missing_subcommand_and_bad_flag_are_usage_errors():
    one_line_error(run_cli(), 2)
    one_line_error(run_cli("embed", "--no-such-flag"), 2)
    assert "--dtype applies to --backend onnx" in one_line_error(
        run_cli("embed", "hi", "--dtype", "int8"), 2
    )


# ----------------------------------------------------------------------------- runtime errors
def test_directory_as_input_is_a_one_line_error(tmp_path):
    line = one_line_error(run_cli("embed", "--input", str(tmp_path)), 1)
    assert "Is a directory" in line and str(tmp_path) in line


def test_checkpoint_missing_a_tensor_is_a_one_line_error(tmp_path):
    """A checkpoint whose manifest is consistent but whose weights lack a tensor."""
    from safetensors.numpy import load_file, save_file

    from fastlm.hub import WEIGHTS_DIR
    from fastlm.io import sha256_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in (WEIGHTS_DIR / "lstm").iterdir():
        if f.is_file():  # not its onnx/ pack
            (ckpt / f.name).write_bytes(f.read_bytes())
    tensors = load_file(ckpt / "model.safetensors")
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, ckpt / "model.safetensors")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(ckpt / "model.safetensors")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(run_cli("embed", "hi", "--model", str(ckpt), "--threads", "1"), 1)
    assert dropped in line


def test_closed_stdout_pipe_is_silent(tmp_path):
    """`fastlm embed | head -1`: no BrokenPipeError traceback, a non-zero exit like GNU tools."""
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"line number {i}\n" for i in range(300)))  # ~1 MB of JSON
    proc = subprocess.Popen(
        [*FASTLM, "embed", "--input", str(texts), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=300)
    assert json.loads(first)["text"] == "line number 0"
    assert proc.returncode == 1 and err == b""


def _blocked_on_stdin(pid: int, timeout: float = 60.0) -> None:
    """Wait until the process sleeps in a pipe read (Linux /proc), else a fixed pause."""
    wchan = Path(f"/proc/{pid}/wchan")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            where = wchan.read_text()
        except OSError:
            time.sleep(5)
            return
        if "pipe" in where:
            return
        time.sleep(0.1)


def test_ctrl_c_is_one_line_and_exit_130():
    # Started the way an interactive shell starts it, with SIGINT at its default: a process that
    # inherits SIGINT ignored keeps ignoring it (POSIX), and pytest's process may hold it ignored
    # while another thread waits in system().
    proc = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT_EXEC, *FASTLM, "embed"],  # waits for stdin texts
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        _blocked_on_stdin(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip() == "fastlm embed: interrupted"


# exec the command with SIGINT reset to its default (dispositions set to default survive exec)
DEFAULT_SIGINT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


# ----------------------------------------------------------------------------- outputs
def test_crlf_input_loses_its_carriage_returns():
    proc = run_cli("embed", "--threads", "1", stdin="alpha\r\nbeta\r\n\r\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["alpha", "beta", ""]


def test_embed_npy_and_jsonl_match_the_api(tmp_path):
    import fastlm

    texts = ["a first text", "and a second, longer one", "naïve café 日本語"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    common = ["--input", str(tmp_path / "in.txt"), "--model", "lstm", "--threads", "1"]
    common += ["--backend", "eager"]  # the command's output, compared exactly
    assert run_cli("embed", *common, "--out", str(tmp_path / "v.npy")).returncode == 0
    assert run_cli("embed", *common, "--out", str(tmp_path / "v.jsonl")).returncode == 0
    expected = fastlm.load("lstm", backend="eager", device="cpu").embed(texts)
    got = np.load(tmp_path / "v.npy")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text("utf-8").splitlines()]
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_embed_kind_query_gives_the_query_vectors(tmp_path):
    import fastlm

    texts = ["who wrote the tempest", "surface codes"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    common = ["--input", str(tmp_path / "in.txt"), "--model", "lstm", "--threads", "1"]
    common += ["--backend", "eager", "--out", str(tmp_path / "q.npy"), "--kind", "query"]
    assert run_cli("embed", *common).returncode == 0
    model = fastlm.load("lstm", backend="eager", device="cpu")
    np.testing.assert_allclose(
        np.load(tmp_path / "q.npy"), model.embed(texts, kind="query"), atol=1e-6
    )
    assert np.abs(np.load(tmp_path / "q.npy") - model.embed(texts)).max() > 0.01
    bad = run_cli("embed", "--model", "lstm", "--kind", "queries", "a text")
    assert bad.returncode == 2 and "--kind" in bad.stderr


def test_embed_streams_in_chunks_to_a_file_and_a_pipe(tmp_path):
    import fastlm

    texts = ["one", "", "naïve café", "x " * 300, "日本語", "six", "seven\rin one line"]
    src = tmp_path / "in.txt"
    src.write_bytes(b"".join(t.encode() + b"\r\n" for t in texts))
    common = ["--input", str(src), "--model", "lstm", "--threads", "1", "--chunk-size", "2"]
    common += ["--backend", "eager"]  # exact: int8 vectors vary slightly with their batch
    expected = fastlm.load("lstm", backend="eager", device="cpu").embed(texts)
    for name in ("v.npy", "v.jsonl"):
        proc = run_cli("embed", *common, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        assert "fastlm embed: 7 texts" in proc.stderr and "tokens/s" in proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text("utf-8").splitlines()]
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-6)
    piped = subprocess.run(
        [*FASTLM, "embed", *common, "--format", "npy"], capture_output=True, env=_env(), cwd=ROOT
    )
    assert piped.returncode == 0 and piped.stderr == b""  # no summary, no bar: not a terminal
    np.testing.assert_array_equal(np.load(io.BytesIO(piped.stdout)), np.load(tmp_path / "v.npy"))


def test_embed_bad_line_leaves_the_previous_output_whole(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine\nalso fine\nbroken \xff\nnever read\n")
    out = tmp_path / "v.npy"
    out.write_bytes(b"previous contents")
    args = ["--input", str(src), "--model", "lstm", "--threads", "1", "--chunk-size", "1"]
    line = one_line_error(run_cli("embed", *args, "--out", str(out)), 1)
    assert f"{src} line 3 is not UTF-8" in line
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "v.npy"]  # no temp file


def test_generate_is_greedy_by_default_and_matches_the_api(capsys):
    import fastlm
    from fastlm.cli import main

    model = fastlm.load("lstm", backend="eager", device="cpu")
    prompts = ["Once upon a time", "The river"]
    expected = model.generate(prompts, max_new_tokens=12)  # a list of prompts -> a list
    assert expected == [model.generate(p, max_new_tokens=12, temperature=0) for p in prompts]
    args = ["generate", *prompts, "--model", "lstm", "--max-new-tokens", "12", "--threads", "1"]
    assert main([*args, "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts and [r["text"] for r in rows] == expected
    assert main(args) == 0  # streamed to stdout, one line per prompt
    assert capsys.readouterr().out == "".join(t + "\n" for t in expected)


def test_score_json_matches_the_api(capsys):
    import fastlm
    from fastlm.cli import main

    texts = ["The cat sat on the mat.", ""]
    expected = fastlm.load("lstm", backend="eager", device="cpu").score(texts)
    assert main(["score", *texts, "--model", "lstm", "--json", "--threads", "1"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in rows] == [e.tokens for e in expected]
    for row, e in zip(rows, expected):
        assert row["log_likelihood"] == pytest.approx(e.log_likelihood, rel=1e-6)
        assert row["bits_per_byte"] == pytest.approx(e.bits_per_byte, rel=1e-6)


def test_verbose_adds_the_traceback(tmp_path):
    proc = run_cli("embed", "--input", str(tmp_path), "--verbose")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "IsADirectoryError" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("fastlm embed: error: Is a directory")


def test_warnings_and_fastlm_info_logs_are_single_lines(capsys, monkeypatch):
    import logging
    import warnings

    from fastlm.cli import configure_output

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after
    monkeypatch.setattr(logging.getLogger("fastlm"), "level", logging.NOTSET)
    monkeypatch.setattr(logging.root, "handlers", [])  # basicConfig's handler is dropped after
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    configure_output(verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("3 texts were truncated", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "fastlm: UserWarning: 3 texts were truncated\n"
    assert logging.getLogger("fastlm").isEnabledFor(logging.INFO)  # first-use export notice
