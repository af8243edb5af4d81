"""Plot validation bits per byte against tokens seen from training JSONL logs.

python scripts/plot_curves.py docs/training_logs/*.jsonl --out docs/valid_curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: tools/ is not installed


def read_eval(path: Path) -> tuple[list[float], list[float]]:
    tokens, bpb = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval":
            tokens.append(rec["tokens"] / 1e6)
            bpb.append(rec["valid_bits_per_byte"])
    return tokens, bpb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/valid_curves.png"))
    args = p.parse_args()
    from tools.plotting import pyplot

    plt = pyplot("scripts/plot_curves.py")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for log in args.logs:
        x, y = read_eval(log)
        ax.plot(x, y, marker=".", label=f"{log.stem} (last {y[-1]:.3f})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("valid bits per byte")
    ax.set_title("gutenberg_en validation curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
