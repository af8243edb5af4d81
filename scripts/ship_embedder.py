"""Ship a trained embedding tower beside a shipped LM: fastlm/weights/<name>/embedder.safetensors.

    python scripts/ship_embedder.py runs/embed-transformer transformer --command "python ..."
    python scripts/ship_embedder.py runs/mixed-transformer/step-1200 transformer --command "..."

RUN is the output directory of scripts/train_embedder.py (its latest step is shipped) or one
evaluation directory of scripts/train_tower_mixed.py (`step-N/`: the tower and the lexical
branch's weight w it was trained with, shipped with it unless --weight says otherwise, e.g. the
choice of scripts/choose_lexical_weight.py --tower; the branch's table stays; give the dev
figures of that weight with --extra '{"dev": {...}}'). --query-weight sets the weight queries
are embedded with (`embed(kind="query")`; default: the document weight).
The LM's own files are rewritten unchanged (same tensors, same sha256); the manifest keeps its
training/test facts and gains an "embedder" section (command, steps, data, time, the run's dev
figures) and the new file's sha256.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastlm.char_ngrams import LexicalBranch
from fastlm.checkpoint import load_checkpoint, save_checkpoint
from fastlm.export.model_card import write_model_card
from fastlm.hub import WEIGHTS_DIR
from fastlm.models import build_model
from fastlm.models.embedder import tower_from_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a train_embedder.py run or a train_tower_mixed.py step")
    p.add_argument("name", help="shipped model name")
    p.add_argument("--command", default="", help="the training command, recorded as-is")
    p.add_argument("--weight", type=float, help="branch weight (default: the step's w, or kept)")
    p.add_argument(
        "--query-weight", type=float, help="branch weight of queries (default: --weight)"
    )
    p.add_argument("--extra", default="{}", help="JSON object of more facts to record")
    args = p.parse_args()

    ckpt = load_checkpoint(WEIGHTS_DIR / args.name)
    lexical = ckpt.lexical  # a shipped lexical branch stays
    hardware = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    if (args.run / "embedder.safetensors").exists():  # one step of train_tower_mixed.py
        weights = args.run / "embedder.safetensors"
        figures = json.loads((args.run / "figures.json").read_text())
        if lexical is None:
            raise SystemExit(f"{args.name} has no lexical branch to mix the tower with")
        lexical = LexicalBranch(lexical.table, figures["w"], lexical.sizes)
        dev = {k: v for k, v in figures.items() if k not in ("step", "w")}
        facts_run = {"steps": figures["step"], "trained_weight": figures["w"], "dev": dev}
    else:
        step_dir = args.run / (args.run / "latest").read_text().strip()
        state = json.loads((step_dir / "state.json").read_text())
        weights = step_dir / "tower.safetensors"
        log = [json.loads(line) for line in (args.run / "log.jsonl").open()]
        evals = [r for r in log if "stsb_dev" in r]
        facts_run = {
            "steps": state["step"],
            "config": state["config"],
            "train_seconds": round(log[-1]["seconds"], 1) if log else None,
            "stsb_dev_at_end": evals[-1]["stsb_dev"] if evals else None,
        }
    if args.weight is not None:
        if lexical is None:
            raise SystemExit(f"--weight: {args.name} has no lexical branch")
        lexical = LexicalBranch(lexical.table, args.weight, lexical.sizes)
        if facts_run.get("trained_weight") != args.weight:
            facts_run.pop("dev", None)  # measured at another weight: give them with --extra
    if args.query_weight is not None:
        if lexical is None:
            raise SystemExit(f"--query-weight: {args.name} has no lexical branch")
        lexical = LexicalBranch(lexical.table, lexical.weight, lexical.sizes, args.query_weight)
        if args.query_weight != lexical.weight:
            facts_run.pop("dev", None)  # measured with queries as documents: give with --extra
    tower = tower_from_weights(build_model(ckpt.config), load_file(str(weights)))
    facts = {k: v for k, v in ckpt.manifest.items() if k not in ("format", "architecture", "files")}
    if lexical is not None and "lexical" in facts:
        facts["lexical"]["weight"] = lexical.weight
        facts["lexical"]["query_weight"] = lexical.query_weight
        facts["lexical"].pop("dev", None)  # the figures of the embedding this one replaces
    facts["embedder"] = {
        "command": args.command,
        **facts_run,
        "hardware": hardware,
        **json.loads(args.extra),
    }
    save_checkpoint(
        WEIGHTS_DIR / args.name,
        ckpt.model,
        ckpt.tokenizer,
        extra_manifest=facts,
        force=True,
        embedder=tower,
        lexical=lexical,
    )
    write_model_card(WEIGHTS_DIR / args.name)  # README.md from the manifest just written
    print(json.dumps(facts["embedder"], indent=1))


if __name__ == "__main__":
    main()
