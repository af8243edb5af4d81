"""Package a trained run as a shipped model: fastlm/weights/<name>/ (+ its log under docs/).

    python scripts/ship_model.py runs/transformer transformer \
        --test ../shared/data/gutenberg_en/test.txt --command "fastlm train ..."

Writes model.safetensors, config.json, tokenizer.json and manifest.json (sha256 of each file,
training facts, test-split metrics), then the model card README.md from that manifest. No
optimizer state is shipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from fastlm.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from fastlm.export.model_card import write_model_card
from fastlm.hub import WEIGHTS_DIR, resolve_checkpoint
from fastlm.training import evaluate_file


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="run directory written by `fastlm train`")
    p.add_argument("name", help="shipped model name, e.g. transformer")
    p.add_argument("--test", required=True, help="test text file for the reported metrics")
    p.add_argument("--command", default="", help="the training command, recorded as-is")
    p.add_argument("--hardware", default=None, help="defaults to this machine's CPU")
    args = p.parse_args()

    ckpt_dir = resolve_checkpoint(args.run)
    ckpt = load_checkpoint(ckpt_dir)
    state = load_trainer_state(ckpt_dir)
    result = evaluate_file(ckpt.model, ckpt.tokenizer, args.test, seq_len=int(state["seq_len"]))
    facts = {
        "name": args.name,
        "training": {
            "command": args.command,
            "steps": state["step"],
            "tokens_seen": state["tokens_seen"],
            "train_seconds": round(state["time"], 1),
            "seq_len": state["seq_len"],
            "hardware": args.hardware or f"{cpu_name()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
        },
        "test": {"data": Path(args.test).name, **result.as_dict()},
        "seq_len": state["seq_len"],
    }
    save_checkpoint(
        WEIGHTS_DIR / args.name, ckpt.model, ckpt.tokenizer, extra_manifest=facts, force=True
    )
    write_model_card(WEIGHTS_DIR / args.name)  # README.md from the manifest just written
    logs = Path(__file__).resolve().parents[1] / "docs" / "training_logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(args.run) / "log.jsonl", logs / f"{args.name}.jsonl")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
