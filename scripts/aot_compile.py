"""Compile every Triton kernel variant for Hopper (sm_90) and Ampere (sm_80) without a GPU.

    python scripts/aot_compile.py                  # full sweep, sm_90 and sm_80, markdown table
    python scripts/aot_compile.py --quick --arch 90
    python scripts/aot_compile.py --out table.md   # also write the table (atomically)

Prints one line per variant as it compiles (registers, spill bytes, shared memory), then a
markdown table. Exit status 1 when a variant fails to compile, spills outside fp32, or asks
for more shared memory than the SM has; 0 otherwise. See tools/aot.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the AOT compile needs the real JIT functions: triton reads this when the kernels are
# decorated, which happens below, at import
os.environ.pop("TRITON_INTERPRET", None)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: fastlm, tools

from triton.compiler.errors import CompilationError  # noqa: E402

from tools import aot  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset (CI)")
    parser.add_argument(
        "--arch", type=int, action="append", choices=sorted(aot.SHARED_LIMIT),
        help="compute capability x10; repeatable (default: 90 and 80)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    archs = args.arch or [90, 80]
    variants = aot.quick_variants() if args.quick else aot.all_variants()
    reports, failures = [], []
    start = time.perf_counter()
    for arch in archs:
        for variant in variants:
            try:
                report = aot.compile_variant(variant, arch)
            except CompilationError as err:
                failures.append(f"sm_{arch} {variant.label}: compile error: {err}")
                print(f"FAIL sm_{arch} {variant.label}: compile error", flush=True)
                continue
            reports.append(report)
            problems = "; ".join(report.problems)
            failures += [f"sm_{arch} {variant.label}: {problems}"] if problems else []
            print(
                f"{'FAIL' if problems else 'ok  '} sm_{arch} {variant.label}: "
                f"{report.registers} regs, spills {report.spill_stores}/{report.spill_loads} B, "
                f"shared {report.shared} B ({report.seconds:.1f} s) {problems}",
                flush=True,
            )
    table = aot.markdown_table(reports) + "\n\n" + aot.summary_table(reports)
    print(f"\n{table}\n\n{len(reports)} compiled in {time.perf_counter() - start:.0f} s")
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(table + "\n", encoding="utf-8")
        tmp.replace(args.out)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
