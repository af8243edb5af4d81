"""Model load time per backend (ONNX: session creation), compile time, and export time.

- load: `fastlm.load(...)` wall time, shipped weights by name when the package has them. For
  "compile" this is the wrapper only: compilation happens on the first call and is reported by
  test_compile_time (and in the summary), never mixed into other timings.
- export: `fastlm.export.export(model, out, dtype=D)` (what `fastlm export` runs): the ONNX
  graphs and their parity certificate, then the directory verified (every file against its
  sha256 manifest, the dtype asked for); skipped without the onnx extra.
Ratios vs eager are reported, not gated: loading is a one-off cost.
"""

from __future__ import annotations

import itertools

import pytest

from fastlm.ort.format import verify_export_dir
from tools.benchmarking import ARCHS, BACKENDS, BackendUnavailable, load_model, timed

LOAD_BUDGET_S = 3.0  # rounds per backend: as many as fit (1..5), judged by the first load


@pytest.mark.parametrize("key", list(BACKENDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_load_time(bench, sources, device, threads, arch, key):
    def load():
        return load_model(sources[arch], key, device, threads)

    try:
        first = timed(load, device)  # cold: file cache, imports, one-off setup
    except BackendUnavailable as err:
        pytest.skip(f"{arch}/{key}: {err}")
    rounds = max(1, min(5, int(LOAD_BUDGET_S / max(first, 1e-3))))
    eager = (
        (lambda: load_model(sources[arch], "eager", device, threads)) if key != "eager" else None
    )
    timing = bench.run(load, eager, rounds, 0)
    bench.describe(
        "load",
        arch,
        key,
        source=str(sources[arch]),
        first_load_ms=round(1000 * first, 1),
        load_ms=round(1000 * timing.seconds, 1),
    )
    bench.check("load", arch, key, "load", timing)


@pytest.mark.parametrize("arch", ARCHS)
def test_compile_time(lms, arch, record_property):
    """torch.compile's first calls per graph, seconds (warmed once per session by `lms`)."""
    lm = lms(arch, "compile")
    seconds = getattr(lm.backend, "compile_seconds", {})
    assert seconds, "the compile backend reports no compile time"
    for graph, secs in seconds.items():
        record_property(f"compile_seconds_{graph}", round(secs, 2))


def _exporter():
    """fastlm.export.export, or a skip when the onnx extra (onnx, onnxscript, onnxruntime) is
    missing. Only a missing extra skips: an ImportError inside fastlm.export is a failure."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason="export needs the onnx extra: pip install -e '.[onnx]'")
    from fastlm.export import export

    return export


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_time(bench, sources, tmp_path, arch, dtype):
    """`fastlm.export.export(model, out, dtype=...)`: ONNX graphs plus their parity check."""
    export = _exporter()
    outs = (tmp_path / f"out{i}" for i in itertools.count())
    last = []

    def run():
        last.append(next(outs))  # a fresh directory per round: export refuses existing ones
        export(str(sources[arch]), last[-1], dtype=dtype)

    timing = bench.run(run, None, rounds=1, warmup=0)  # seconds per export: one is enough
    manifest = verify_export_dir(last[-1])  # every file present and matching its sha256
    assert manifest["dtype"] == dtype
    size = sum(f.stat().st_size for f in last[-1].rglob("*") if f.is_file())
    bench.info(
        suite="export",
        model=arch,
        dtype=dtype,
        export_s=round(timing.seconds, 2),
        output_bytes=size,
    )
