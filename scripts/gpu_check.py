"""One GPU check for fastlm's Triton kernels: correctness first, then timings, then end to end.

    python scripts/gpu_check.py --prepare-texts   # here: real text into build/gpu_check/
    PYTHONPATH=. python scripts/gpu_check.py      # on the CUDA machine: no installs
    python scripts/gpu_check.py --dry-run         # on a CPU: everything but the CUDA parts

Runs from the repository root with the machine's own torch and triton (nothing to install;
`pip install -e .` needs setuptools, which an offline machine may not have). Each section is
printed and appended to $OUT/gpu_check.md (./gpu_check.md without OUT) the moment it ends, so
a timeout keeps what finished:

    environment   versions, device, TF32 settings
    smoke         every kernel variant the launchers can pick, launched once against the
                  reference (max error, pass/fail); dry run: the same launches under the Triton
                  interpreter (fp32/fp16, tiny shapes)
    aot           dry run only: scripts/aot_compile.py --quick --arch 90 (on a GPU the smoke
                  launches compile every variant)
    kernel tests  pytest tests/test_kernels_*.py          (dry run: collection only)
    engine tests  pytest tests/test_triton_backend.py     (dry run: collection only)
    timings       LSTM decode step and 256x128 sequence vs cuDNN, attention vs SDPA
    end to end    embed 10,000 real texts (build/gpu_check/texts.txt, carried there)

Exit status 1 when any section fails (a failing section never stops the next one), 2 without
CUDA and without --dry-run. Whole run: an estimated 4-6 minutes on an H100/H200 (docs/gpu.md;
not timed). Only the pytest sections (150 s each) and aot (300 s) have time limits; smoke,
timings and end to end have none, so give the run one (`timeout 480 ...`).
References on the GPU run with TF32 off (`no_tf32`): cuDNN's fp32 default on Ampere and later
is TF32, ~5e-5 off, which would make fp32 parity checks flaky.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXTS = REPO / "build" / "gpu_check" / "texts.txt"  # build/ is git-ignored; carried explicitly
N_TEXTS = 10_000


SECTION_KEYS = ("environment", "smoke", "aot", "kernel-tests", "engine-tests", "timings", "e2e")


def _early_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU: all but the CUDA parts")
    parser.add_argument("--prepare-texts", type=Path, nargs="?", const=Path("auto"),
                        help="write --texts from this text file (default: "
                        "../shared/data/gutenberg_en/valid.txt) and exit")  # fmt: skip
    parser.add_argument(
        "--texts",
        type=Path,
        default=TEXTS,
        help="real texts, one a line (default: build/gpu_check/texts.txt)",
    )
    parser.add_argument("--only", nargs="+", choices=SECTION_KEYS,
                        help="run only these sections (a rerun after a failure)")  # fmt: skip
    return parser.parse_args()


ARGS = _early_args()
sys.path.insert(0, str(REPO))  # run from a checkout without installing fastlm
if ARGS.dry_run:
    # the smoke section runs the kernels under the interpreter: set before triton loads them
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(REPO / "tests"))
    import conftest  # noqa: E402, F401  (its interpreter fix for numpy >= 2.4)

import torch  # noqa: E402

# ----------------------------------------------------------------------------- report


class Report:
    """Sections appended to a markdown file as they finish; remembers failures."""

    def __init__(self, path: Path):
        self.path, self.failed, self.start = path, [], time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# fastlm GPU check\n", encoding="utf-8")

    def section(self, title: str, run: Callable[[], tuple[list[str], bool]]) -> None:
        began = time.perf_counter()
        try:
            lines, ok = run()
        except Exception:  # noqa: BLE001 - record any failure and go on to the next section
            lines, ok = ["```", traceback.format_exc().rstrip(), "```"], False
        verdict = "ok" if ok else "FAILED"
        self.failed += [] if ok else [title]
        took = time.perf_counter() - began
        text = "\n".join(["", f"## {title}: {verdict} ({took:.0f} s)", "", *lines, ""])
        print(text, flush=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text + "\n")

    def finish(self) -> int:
        total = time.perf_counter() - self.start
        summary = f"total {total:.0f} s; failed: {', '.join(self.failed) or 'none'}"
        self.section("summary", lambda: ([summary], not self.failed))
        return 1 if self.failed else 0


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full-precision fp32 matmuls and cuDNN while a reference runs on the GPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------- sections


def environment() -> tuple[list[str], bool]:
    import triton

    lines = [f"- torch {torch.__version__}, triton {triton.__version__}, python "
             f"{sys.version.split()[0]}", f"- dry run: {ARGS.dry_run}"]  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines += [
            f"- device: {props.name}, sm_{props.major}{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"CUDA {torch.version.cuda}",
            f"- TF32 defaults: matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cudnn {torch.backends.cudnn.allow_tf32} (references run with both off)",
        ]
    else:
        lines.append("- device: none (CUDA unavailable)")
    return lines, True


def smoke() -> tuple[list[str], bool]:
    """Launch every variant once against the reference; see gpu_smoke.py for the list. Rows
    are written as they come: a launch that raises keeps the rows before it."""
    import gpu_smoke

    device = "cpu" if ARGS.dry_run else "cuda"  # dry run: the interpreter, on CPU tensors
    lines = ["| launch | dtype | max abs err | result |", "|---|---|---|---|"]
    ok, count = True, 0
    with no_tf32():
        try:
            for name, dtype, err, passed in gpu_smoke.run_all(device, tiny=ARGS.dry_run):
                ok &= passed
                count += 1
                lines.append(f"| {name} | {dtype} | {err:.2e} | {'ok' if passed else 'FAIL'} |")
        except Exception:  # noqa: BLE001 - keep the table so far; the section fails
            lines += ["", "launch after the last row raised:", "```", traceback.format_exc(), "```"]
            ok = False
    return lines, ok and count > 0


def aot_compile() -> tuple[list[str], bool]:
    """The CI compile check for sm_90 (dry run only: on the GPU the smoke section compiles)."""
    cmd = [sys.executable, str(REPO / "scripts" / "aot_compile.py"), "--quick", "--arch", "90"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    return table + ([] if done.returncode == 0 else [done.stderr[-3000:]]), done.returncode == 0


def pytest_section(files: list[str], timeout: int) -> Callable[[], tuple[list[str], bool]]:
    def run() -> tuple[list[str], bool]:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
        cmd += ["--collect-only"] if ARGS.dry_run else ["-x"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
            "PYTHONPATH", "")])}  # fmt: skip
        try:
            done = subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return [f"timed out after {timeout} s: {' '.join(files)}"], False
        tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
        lines = [f"`pytest {' '.join(files)}` rc={done.returncode}: {tail[0]}"]
        if done.returncode != 0:
            lines += ["```", done.stdout[-6000:], done.stderr[-2000:], "```"]
        return lines, done.returncode == 0

    return run


def timing(table: str) -> Callable[[], tuple[list[str], bool]]:
    """One gpu_timings table as a section: a failing table does not cost the others."""

    def run() -> tuple[list[str], bool]:
        import gpu_timings

        return getattr(gpu_timings, table)(), True

    return run


def load_texts(n: int = N_TEXTS) -> list[str]:
    """n real texts from --texts (one per line; --prepare-texts writes it), cycled to n."""
    path: Path = ARGS.texts
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run --prepare-texts on a machine with ../shared and copy "
            "build/gpu_check to the GPU machine (no synthetic stand-in: it would time nothing real)"
        )
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def end_to_end() -> tuple[list[str], bool]:
    import fastlm

    texts = load_texts()
    if ARGS.dry_run:  # the same calls on a slice, eager on CPU: checks the path, times nothing
        engine = fastlm.load("transformer", backend="eager", device="cpu")
        vectors = engine.embed(texts[:16])
        return [f"dry run: eager CPU embed of 16 real texts -> {vectors.shape}"], True
    lines, ok = [], True
    for arch in ("transformer", "lstm"):
        engine = fastlm.load(arch, backend="triton", device="cuda")
        # one untimed pass first: attention autotunes once per length bucket, and every
        # bucket of the timed pass must already be tuned and compiled
        engine.embed(texts)
        torch.cuda.synchronize()
        start = time.perf_counter()
        vectors = engine.embed(texts)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        finite = bool(torch.from_numpy(vectors).isfinite().all())
        ok &= finite and vectors.shape[0] == len(texts)
        lines.append(f"- {arch}: {len(texts):,} texts in {seconds:.2f} s "
                     f"({len(texts) / seconds:,.0f} texts/s), finite={finite}")  # fmt: skip
    return lines, ok


def prepare_texts(source: Path, target: Path) -> int:
    """Write N_TEXTS paragraphs (wrapped lines joined) of source to target, atomically."""
    if source == Path("auto"):
        source = REPO.parent / "shared" / "data" / "gutenberg_en" / "valid.txt"
    paragraphs = [" ".join(p.split()) for p in source.read_text(encoding="utf-8").split("\n\n")]
    paragraphs = [p for p in paragraphs if p][:N_TEXTS]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {len(paragraphs):,} texts from {source} to {target}")
    return 0


def main() -> int:
    if ARGS.prepare_texts is not None:
        return prepare_texts(ARGS.prepare_texts, ARGS.texts)
    if not ARGS.dry_run and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    kernel_tests = ["tests/test_kernels_lstm.py", "tests/test_kernels_attention.py"]
    plan = [  # (key, title, run, runs in a dry run, runs on a GPU)
        ("environment", "environment", environment, True, True),
        ("smoke", "smoke: every kernel variant vs the reference", smoke, True, True),
        ("aot", "AOT compile, sm_90", aot_compile, True, False),  # on a GPU: smoke compiles
        ("kernel-tests", "kernel tests", pytest_section(kernel_tests, 150), True, True),
        ("engine-tests", "engine tests", pytest_section(["tests/test_triton_backend.py"], 150),
         True, True),
        ("timings", "timings: LSTM decode step", timing("decode_table"), False, True),
        ("timings", "timings: LSTM sequence", timing("sequence_table"), False, True),
        ("timings", "timings: causal attention", timing("attention_table"), False, True),
        ("e2e", "end to end", end_to_end, True, True),
    ]  # fmt: skip
    report = Report(Path(os.environ.get("OUT", ".")) / "gpu_check.md")
    for key, title, run, in_dry_run, on_gpu in plan:
        wanted = ARGS.only is None or key in ARGS.only
        if wanted and (in_dry_run if ARGS.dry_run else on_gpu):
            report.section(title, run)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
