"""Charts of benchmark and training results (matplotlib: the optional extra `plot`).

`plot` draws `python -m tools.bench`'s rows; `pyplot` is the headless matplotlib setup every
chart here and in scripts/ starts from, with one message naming the extra when matplotlib is
missing.
"""

from __future__ import annotations

from tools.benchmarking import BACKENDS, cpu_name


def pyplot(what: str = "--plot"):
    """matplotlib.pyplot on the Agg backend (files only, no display); ImportError names the
    extra to install, `what` being the feature that needs it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{what} needs matplotlib: pip install 'fastlm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict], path: str) -> None:
    """Latency (ms) and throughput (texts/s) vs batch size, one line per model/backend."""
    plt = pyplot()
    import matplotlib.ticker

    fig, (ax_ms, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"lstm": "--", "transformer": "-"}
    colors = {key: f"C{i}" for i, key in enumerate(BACKENDS)}  # one colour per backend
    for arch, key in dict.fromkeys((r["model"], r["backend"]) for r in rows):
        pts = [r for r in rows if r["model"] == arch and r["backend"] == key]
        xs = [r["batch"] for r in pts]
        for ax, field in ((ax_ms, "ms"), (ax_tp, "texts_per_s")):
            ax.plot(
                xs,
                [r[field] for r in pts],
                styles.get(arch, "-"),
                color=colors[key],
                marker="o",
                label=f"{arch} {key}",
            )
    seq = rows[0]["seq_len"] if rows else "?"
    for ax, label in ((ax_ms, "latency per batch (ms)"), (ax_tp, "throughput (texts/s)")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(f"batch size ({seq} tokens per text)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.suptitle(f"fastlm embed, {cpu_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
