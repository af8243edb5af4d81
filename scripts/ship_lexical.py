"""Ship a trained lexical branch beside a shipped model: fastlm/weights/<name>/lexical.safetensors.

    python scripts/ship_lexical.py runs/lex/final/lexical.safetensors transformer --weight 1.0 \
        --command "python scripts/train_lexical.py ..." --extra '{"dev": {...}}'

The LM's and the tower's files are rewritten unchanged (same tensors, same sha256); the manifest
keeps its facts and gains a "lexical" section (command, weight, table size, anything in --extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastlm.char_ngrams import LexicalBranch
from fastlm.checkpoint import load_checkpoint, save_checkpoint
from fastlm.export.model_card import write_model_card
from fastlm.hub import WEIGHTS_DIR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", type=Path, help="lexical.safetensors of scripts/train_lexical.py")
    p.add_argument("name", help="shipped model name")
    p.add_argument("--weight", type=float, required=True, help="the branch's weight in embed()")
    p.add_argument("--command", default="", help="the training command, recorded as-is")
    p.add_argument("--extra", default="{}", help="JSON object of more facts to record")
    args = p.parse_args()

    trained = LexicalBranch.load(args.table)
    branch = LexicalBranch(trained.table, args.weight, trained.sizes)
    table = branch.table
    ckpt = load_checkpoint(WEIGHTS_DIR / args.name)
    facts = {k: v for k, v in ckpt.manifest.items() if k not in ("format", "architecture", "files")}
    facts["lexical"] = {
        "command": args.command,
        "weight": args.weight,
        "buckets": table.shape[0],
        "ngram_sizes": list(branch.sizes),
        "stored": "int8 rows + float32 row scales",
        **json.loads(args.extra),
    }
    tower = ckpt.embedder if ckpt.embedder.proj is not None else None
    save_checkpoint(
        WEIGHTS_DIR / args.name,
        ckpt.model,
        ckpt.tokenizer,
        extra_manifest=facts,
        force=True,
        embedder=tower,
        lexical=branch,
    )
    write_model_card(WEIGHTS_DIR / args.name)
    print(json.dumps(facts["lexical"], indent=1))


if __name__ == "__main__":
    main()
