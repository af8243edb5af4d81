"""`python -m tools.bench`: a quick embedding latency/throughput table per backend, vs batch size.

    python -m tools.bench                         # eager vs compile vs onnx, both models
    python -m tools.bench --batch-sizes 1 8 64 --plot docs/bench_plot.png

Run from the repository root (tools/ is development tooling, not installed with fastlm). The
parser needs only tools.benchmarking's constants (stdlib imports), so `--help` is fast; torch,
the models and matplotlib load when the command runs. Timing, loading and environment facts come
from tools.benchmarking, as in the `pytest bench/` suites.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tools.benchmarking import (
    ARCHS,
    BACKENDS,
    BackendUnavailable,
    env_info,
    load_model,
    median,
    model_sources,
    random_batch,
    speed_ratio,
    timed,
    warm_up,
)
from tools.plotting import plot  # imports matplotlib only when it draws


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="A quick embedding latency/throughput table per backend, vs batch size.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(ARCHS),
        choices=ARCHS,
        help="architectures (shipped weights, else random-weight checkpoints)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["eager", "compile", "onnx-fp32", "onnx-int8"],
        choices=sorted(BACKENDS),
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--seq-len", type=int, default=64, help="tokens per text")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--plot", metavar="FILE.png", help="draw latency and throughput vs batch size")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.seq_len < 1 or args.repeats < 1:
        parser.error("batch sizes, --seq-len and --repeats must be >= 1")
    return run(args)


def run(args) -> int:
    import torch  # torch: not for --help

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = model_sources(Path(tmp))
        for arch in args.models:
            rows += _bench_model(arch, sources[arch], args, device)
    info = env_info(device)
    print(
        f"device {device} ({info.get('gpu') or info['cpu']}), threads {info['threads']}, "
        f"torch {info['torch_version']}, onnxruntime {info['onnxruntime_version']}"
    )
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _bench_model(arch: str, source, args, device: str) -> list[dict]:
    models = {}
    for key in sorted(dict.fromkeys(args.backends), key=lambda k: k != "eager"):  # eager first
        start = time.perf_counter()
        try:
            models[key] = load_model(source, key, device, args.threads)
        except BackendUnavailable as err:
            print(f"skip {arch}/{key}: {err}")
            continue
        loaded = time.perf_counter()
        warm_up(models[key], decode=False)
        print(
            f"{arch}/{key}: load {loaded - start:.1f} s (ONNX: export on first use), "
            f"first calls (torch.compile: compilation) {time.perf_counter() - loaded:.1f} s"
        )
    if not models:
        return []
    rows = []
    for batch in args.batch_sizes:
        ids, mask = random_batch(batch, args.seq_len, next(iter(models.values())).info.vocab_size)
        times = _round_robin(models, ids, mask, args.repeats, device)
        eager = times.get("eager")
        for key, ts in times.items():
            ms = 1000 * median(ts[: args.repeats])
            ratio = speed_ratio(ts, eager) if eager and key != "eager" else float("nan")
            rows.append(
                {
                    "model": arch,
                    "backend": key,
                    "batch": batch,
                    "seq_len": args.seq_len,
                    "ms": ms,
                    "texts_per_s": batch / ms * 1000,
                    "vs_eager": 1.0 if key == "eager" else ratio,
                }
            )
    return rows


def _round_robin(models: dict, ids, mask, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per backend, one call of each per round so load drifts hit all alike. Round 0
    warms the new shape up and is dropped; eager runs once more at the end, so every other
    backend's runs are bracketed by eager runs (see speed_ratio)."""
    times: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(repeats + 1):
        for key, lm in models.items():
            call = lm.backend.embed_batch
            times[key].append(timed(lambda c=call: c(ids, mask), device))
    times = {key: ts[1:] for key, ts in times.items()}
    if "eager" in models:
        call = models["eager"].backend.embed_batch
        times["eager"].append(timed(lambda: call(ids, mask), device))
    return times


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<12}{'backend':<11}{'batch':>6}{'ms':>10}{'texts/s':>10}{'x eager':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<12}{r['backend']:<11}{r['batch']:>6}{r['ms']:>10.2f}"
            f"{r['texts_per_s']:>10.0f}{r['vs_eager']:>9.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
