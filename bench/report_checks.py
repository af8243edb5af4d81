"""Checks on what the best-backend reports print (bench/test_embed_e2e.py,
bench/test_long_docs.py): a report never fails on its target, but its figures must be sound."""

from __future__ import annotations

import math

import pytest


def check_best_row(row: dict, measured: list[dict]) -> None:
    """`row`: the summary row a best-backend report recorded; `measured`: the rows of the suite
    it picked from. Every figure it prints is finite and positive, its ratio is its own baseline
    time over its time (both suites time their baseline apart from the candidate), it is the
    best ratio measured, and its status says whether that ratio meets its target."""
    figures = {k: row[k] for k in ("ms", "baseline_ms", "ratio", "threshold")}
    assert all(
        isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in figures.values()
    ), figures
    assert row["ratio"] == pytest.approx(row["baseline_ms"] / row["ms"], rel=1e-9), figures
    assert row["backend"] in {r["backend"] for r in measured}
    assert row["ratio"] == max(r["ratio"] for r in measured)
    met = row["ratio"] >= row["threshold"]
    assert row["status"] == ("target met" if met else "target missed"), row
