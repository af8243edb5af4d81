"""Fixtures, timing and ratio gates for the `pytest bench/` latency suites.

Two modes (docs/benchmarks.md):
- full (default): pytest-benchmark reports timings; each suite also times its baseline (eager,
  the seed pipeline, or the `tokenizers` library) back to back with the candidate in the same
  process, and the ratio gates of bench/thresholds.py are enforced.
- smoke (`--benchmark-disable`): every case runs once; ratios are printed but gates are not
  enforced, because one untimed-warm run says nothing about speed.

Models are the shipped ones when the package has them, else SPEC-sized random-weight
checkpoints built once per session (speed does not depend on the weights).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import thresholds
from long_docs import source_text

from tools.benchmarking import (
    BackendUnavailable,
    dtype_of,
    env_info,
    load_model,
    matmul_gflops,
    median,
    model_sources,
    speed_ratio,
    timed,
    warm_up,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARAGRAPH_MAX_CHARS = 500  # 90% of gutenberg_en/valid paragraphs; keeps the seed run short
RESULTS = pytest.StashKey[list]()  # one dict per gated/reported ratio, printed at the end
COMPILE = pytest.StashKey[dict]()  # (model, graph) -> first-call seconds


def pytest_addoption(parser):
    group = parser.getgroup("fastlm bench")
    group.addoption("--bench-device", default=None, help="cpu, cuda (default: cuda if present)")
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="intra-op threads (1 is steadier on a loaded machine)",
    )
    group.addoption(
        "--bench-texts",
        type=int,
        default=None,
        help="paragraphs for the end-to-end suite (default 2000, smoke 200)",
    )
    group.addoption(
        "--bench-long-docs",
        type=int,
        default=None,
        help="documents for the long-document suite (default 120, smoke 24)",
    )
    group.addoption(
        "--bench-minilm",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="sentence-transformers model for the long-document comparison",
    )
    group.addoption(
        "--bench-no-gates",
        action="store_true",
        help="report ratios without enforcing bench/thresholds.py",
    )


def is_smoke(config) -> bool:
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def _stash(config, key, factory):
    if key not in config.stash:
        config.stash[key] = factory()
    return config.stash[key]


# ----------------------------------------------------------------------------- session
@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    import torch

    return pytestconfig.getoption("bench_device") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )


@pytest.fixture(scope="session")
def threads(pytestconfig) -> int | None:
    import torch

    n = pytestconfig.getoption("bench_threads")
    if n:
        torch.set_num_threads(n)  # the seed pipeline and the matmul roof use it too
    return n


@pytest.fixture(scope="session")
def smoke(pytestconfig) -> bool:
    return is_smoke(pytestconfig)


@pytest.fixture(scope="session")
def bench_env(device, threads) -> dict:
    """Recorded with every result; measured once: the fp32 matmul roof (1024^3)."""
    return {**env_info(device), "matmul_gflops": round(matmul_gflops(device), 1)}


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict:
    corpus = SHARED_DATA / "tiny" / "train.txt"
    root = tmp_path_factory.mktemp("bench-models")
    return model_sources(root, corpus if corpus.is_file() else None)


@pytest.fixture(scope="session")
def lms(pytestconfig, sources, device, threads):
    """lms(arch, key) -> a warmed LanguageModel, loaded once per session; skips when the backend
    cannot run here. The load (ONNX: export on first use) and the first (compiling) calls are
    timed apart into the COMPILE table."""
    cache: dict = {}
    compile_times = _stash(pytestconfig, COMPILE, dict)

    def get(arch: str, key: str):
        if (arch, key) not in cache:
            try:
                start = time.perf_counter()
                lm = load_model(sources[arch], key, device, threads)
                compile_times[(arch, key, "load")] = time.perf_counter() - start  # ONNX: export
                compile_times[(arch, key, "first calls")] = timed(lambda: warm_up(lm), device)
                for graph, secs in getattr(lm.backend, "compile_seconds", {}).items():
                    compile_times[(arch, key, graph)] = secs
                cache[arch, key] = lm
            except BackendUnavailable as err:
                cache[arch, key] = err
        value = cache[arch, key]
        if isinstance(value, BackendUnavailable):
            pytest.skip(f"{arch}/{key}: {value}")
        return value

    return get


@dataclass
class Paragraphs:
    texts: list[str]
    source: str


@pytest.fixture(scope="session")
def paragraphs(pytestconfig, smoke) -> Paragraphs:
    """Real paragraphs of mixed length in a fixed shuffled order (the seed pipeline's order)."""
    n = pytestconfig.getoption("bench_texts") or (200 if smoke else 2000)
    text, source = source_text()  # gutenberg_en/valid.txt, else Python docstrings
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if 0 < len(p) <= PARAGRAPH_MAX_CHARS]
    if len(paras) >= n:
        return Paragraphs(random.Random(0).sample(paras, n), source)
    random.Random(0).shuffle(paras)  # a small fallback corpus: cycle through it
    return Paragraphs([paras[i % len(paras)] for i in range(n)], source)


@pytest.fixture(scope="session")
def bench_results(pytestconfig) -> list[dict]:
    return _stash(pytestconfig, RESULTS, list)


# ----------------------------------------------------------------------------- per test
@dataclass
class Timing:
    candidate: list[float]  # seconds per call, after warm-up
    baseline: list[float]  # baseline seconds bracketing the candidate runs: one more (or none)

    @property
    def seconds(self) -> float:
        return median(self.candidate)

    @property
    def ratio(self) -> float:
        return speed_ratio(self.candidate, self.baseline) if self.baseline else 1.0


class Bench:
    """Per-test helper: paired timing, extra_info for the saved JSON, ratio gates."""

    def __init__(self, benchmark, gates: Gates, env: dict, device: str):
        self.benchmark, self.gates, self.device = benchmark, gates, device
        benchmark.extra_info.update(env)

    def run(self, candidate, baseline=None, rounds: int = 5, warmup: int = 1) -> Timing:
        """pytest-benchmark times `candidate`; our own timer times it too and, before each round
        (warm-up rounds included) and once after the last, times `baseline`: every candidate
        run is bracketed by baseline runs (see tools.benchmarking.speed_ratio). Smoke mode: one
        baseline run, then one candidate run, no warm-up."""
        cand, base = [], []
        setup = (lambda: base.append(timed(baseline, self.device))) if baseline else None

        def target():
            cand.append(timed(candidate, self.device))

        self.benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup)
        if baseline and self.benchmark.enabled:
            setup()  # the closing bracket; smoke mode compares its one pair directly
        kept = min(rounds, len(cand))  # smoke mode runs once whatever `rounds` says
        return Timing(cand[-kept:], base[-kept - 1 :] if baseline else [])

    def info(self, **facts) -> None:
        self.benchmark.extra_info.update(facts)

    def describe(self, suite: str, model: str, key: str, dtype: str | None = None, **facts) -> None:
        """extra_info for one model/backend case: what ran (the dtype follows from the backend
        key unless given), then the case's own figures. The device is in the environment."""
        self.info(suite=suite, model=model, backend=key, dtype=dtype or dtype_of(key), **facts)

    def check(
        self,
        suite: str,
        model: str,
        backend: str,
        shape: str,
        timing: Timing,
        baseline: str = "eager",
        baseline_seconds: float | None = None,
    ) -> None:
        """Record the ratio for the summary table and enforce its gate (full mode only)."""
        ratio = timing.ratio if baseline_seconds is None else baseline_seconds / timing.seconds
        base_s = baseline_seconds if baseline_seconds is not None else median(timing.baseline)
        row = {
            "suite": suite,
            "model": model,
            "backend": backend,
            "shape": shape,
            "ms": 1000 * timing.seconds,
            "baseline": baseline,
            "baseline_ms": 1000 * base_s,
            "ratio": ratio,
        }
        self.info(
            ratio=round(ratio, 3),
            ratio_baseline=baseline,
            threshold=thresholds.threshold(suite, model, backend, shape),
        )
        self.gates.apply(row)


class Gates:
    """Looks up each ratio's threshold, records the row for the summary, fails below the gate."""

    def __init__(self, config, results: list[dict]):
        self.results = results
        self.enforce = not is_smoke(config) and not config.getoption("bench_no_gates")

    def apply(self, row: dict) -> None:
        keys = (row["suite"], row["model"], row["backend"], row["shape"])
        limit = thresholds.threshold(*keys)
        target = thresholds.threshold(*keys, table=thresholds.TARGETS)
        if limit is None and target is not None:  # a goal: reported, never fails the run
            met = row["ratio"] >= target
            status = "target met" if met else "target missed"
            self.results.append({**row, "threshold": target, "status": status})
            return
        if limit is None:
            status = "-"
        elif not self.enforce:
            status = "not enforced"
        else:
            status = "ok" if row["ratio"] >= limit else "FAIL"
        self.results.append({**row, "threshold": limit, "status": status})
        if status == "FAIL":
            pytest.fail(
                f"{row['suite']} {row['model']}/{row['backend']} {row['shape']}: "
                f"{row['ratio']:.2f}x {row['baseline']}, gate >= {limit} "
                f"({row['ms']:.2f} ms vs {row['baseline']} {row['baseline_ms']:.2f} ms)"
            )

    def rows(self, suite: str, arch: str) -> list[dict]:
        """The summary rows recorded so far for `suite` on `arch`."""
        return [r for r in self.results if r["suite"] == suite and r["model"] == arch]

    def apply_best(self, suite: str, arch: str, as_suite: str) -> dict:
        """Gate (or report) the fastest backend's row of `suite` for `arch` as `as_suite`; the
        summary row it recorded. Skips when no case of `suite` ran for `arch` (deselected)."""
        rows = self.rows(suite, arch)
        if not rows:
            pytest.skip(f"no {suite} result for {arch} in this session")
        best = max(rows, key=lambda r: r["ratio"])
        keep = ("model", "backend", "shape", "ms", "baseline", "baseline_ms", "ratio")
        self.apply({k: best[k] for k in keep} | {"suite": as_suite})
        return self.results[-1]


@pytest.fixture(scope="session")
def gates(pytestconfig, bench_results) -> Gates:
    return Gates(pytestconfig, bench_results)


@pytest.fixture
def bench(benchmark, gates, bench_env, device) -> Bench:
    return Bench(benchmark, gates, bench_env, device)


# ----------------------------------------------------------------------------- summary
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(RESULTS, [])
    compile_times = config.stash.get(COMPILE, {})
    if not rows and not compile_times:
        return
    tr = terminalreporter
    mode = "smoke: gates not enforced" if is_smoke(config) else "full"
    tr.section(f"fastlm bench: speed ratios = baseline time / candidate time ({mode})")
    head = (
        f"{'suite':<10}{'model':<12}{'backend':<11}{'shape':<11}{'ms':>10}"
        f"{'baseline':>11}{'base ms':>10}{'ratio':>8}{'gate':>7}  status"
    )
    tr.write_line(head)
    tr.write_line("-" * len(head))
    for r in rows:
        gate = "" if r["threshold"] is None else f"{r['threshold']:.2f}"
        tr.write_line(
            f"{r['suite']:<10}{r['model']:<12}{r['backend']:<11}{r['shape']:<11}"
            f"{r['ms']:>10.2f}{r['baseline']:>11}{r['baseline_ms']:>10.2f}"
            f"{r['ratio']:>8.2f}{gate:>7}  {r['status']}"
        )
    if compile_times:
        tr.write_line("")
        tr.write_line("load and first calls (ONNX export, torch.compile per graph), seconds:")
        for (arch, key, graph), secs in compile_times.items():
            tr.write_line(f"  {arch:<12}{key:<11}{graph:<14}{secs:8.2f}")
