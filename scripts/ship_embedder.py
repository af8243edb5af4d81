"""Ship a trained embedding tower beside a shipped LM: fastlm/weights/<name>/embedder.safetensors.

    python scripts/ship_embedder.py runs/embed-transformer transformer --command "python ..."

The LM's own files are rewritten unchanged (same tensors, same sha256); the manifest keeps its
training/test facts and gains an "embedder" section (command, steps, data, time, the last
STS-B dev figure of the run's log) and the new file's sha256.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastlm.checkpoint import load_checkpoint, save_checkpoint
from fastlm.export.model_card import write_model_card
from fastlm.hub import WEIGHTS_DIR
from fastlm.models import build_model
from fastlm.models.embedder import tower_from_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="output directory of scripts/train_embedder.py")
    p.add_argument("name", help="shipped model name")
    p.add_argument("--command", default="", help="the training command, recorded as-is")
    p.add_argument("--extra", default="{}", help="JSON object of more facts to record")
    args = p.parse_args()

    step_dir = args.run / (args.run / "latest").read_text().strip()
    state = json.loads((step_dir / "state.json").read_text())
    ckpt = load_checkpoint(WEIGHTS_DIR / args.name)
    tower = tower_from_weights(
        build_model(ckpt.config), load_file(str(step_dir / "tower.safetensors"))
    )
    log = [json.loads(line) for line in (args.run / "log.jsonl").open()]
    evals = [r for r in log if "stsb_dev" in r]
    facts = {k: v for k, v in ckpt.manifest.items() if k not in ("format", "architecture", "files")}
    facts["embedder"] = {
        "command": args.command,
        "steps": state["step"],
        "config": state["config"],
        "train_seconds": round(log[-1]["seconds"], 1) if log else None,
        "stsb_dev_at_end": evals[-1]["stsb_dev"] if evals else None,
        "hardware": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        **json.loads(args.extra),
    }
    save_checkpoint(
        WEIGHTS_DIR / args.name,
        ckpt.model,
        ckpt.tokenizer,
        extra_manifest=facts,
        force=True,
        embedder=tower,
        lexical=ckpt.lexical,  # a shipped lexical branch stays
    )
    write_model_card(WEIGHTS_DIR / args.name)  # README.md from the manifest just written
    print(json.dumps(facts["embedder"], indent=1))


if __name__ == "__main__":
    main()
