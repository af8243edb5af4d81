"""Model cards: a README.md beside each shipped model and each export, from its manifest.

    python -m fastlm.export.model_card fastlm/weights/lstm fastlm/weights/transformer

Every figure in a card comes from the directory's manifest.json (training facts, test-split
metrics, file hashes), config.json and, for an ONNX export, parity.json: a card states what
was measured, nothing else. `fastlm export` writes one into each export directory.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from fastlm.io import atomic_write_text
from fastlm.models import architectures

CARD_FILE = "README.md"
LICENSE = "MIT (the fastlm package's license, which covers the shipped weights)"


def _architecture(config: dict) -> str:
    """One line on the model, from its architecture (any name an older card may carry)."""

    arch = architectures().get(config.get("architecture"))
    return arch.summary(config) if arch else f"{config.get('architecture')} language model"


def _data_paths(command: str) -> list[str]:
    """The --data arguments of a recorded `fastlm train` command."""
    match = re.search(r"--data\s+(.*?)(?:\s--|$)", command or "")
    return match.group(1).split() if match else []


def _training_section(manifest: dict) -> list[str]:
    train = manifest.get("training")
    if not train:
        return ["## Training", "", "No training facts recorded in the manifest.", ""]
    data = _data_paths(train.get("command", ""))
    lines = ["## Training", ""]
    if data:
        lines.append("Data: " + ", ".join(f"`{d}`" for d in data) + " (the training split).")
    lines += [
        "",
        "| fact | value |",
        "|---|---|",
        f"| tokens seen | {train.get('tokens_seen', '?'):,} |",
        f"| optimizer steps | {train.get('steps', '?'):,} |",
        f"| sequence length | {train.get('seq_len', manifest.get('seq_len', '?'))} |",
        f"| wall time | {train.get('train_seconds', 0) / 3600:.1f} h |",
        f"| hardware | {train.get('hardware', '?')} |",
        f"| torch | {train.get('torch', '?')} |",
        "",
    ]
    if train.get("command"):
        lines += ["Command:", "", "```bash", train["command"], "```", ""]
    return lines


def _metrics_section(manifest: dict) -> list[str]:
    test = manifest.get("test")
    if not test:
        return ["## Evaluation", "", "No test-split metrics recorded in the manifest.", ""]
    return [
        "## Evaluation (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| token perplexity | {test['ppl']:.2f} |",
        f"| bits per byte | {test['bits_per_byte']:.4f} |",
        f"| tokens scored | {test.get('tokens', '?'):,} |",
        f"| UTF-8 bytes | {test.get('bytes', '?'):,} |",
        "",
        "Bits per byte (total negative log-likelihood in bits / UTF-8 bytes) is the figure to "
        "compare across tokenizers.",
        "",
    ]


def _embedder_section(manifest: dict) -> list[str]:
    """The similarity-trained embedding tower's facts, when the checkpoint ships one."""
    emb = manifest.get("embedder")
    if not isinstance(emb, dict):
        return []
    lines = [
        "## Embedding tower",
        "",
        "`embed()` runs a tower trained for similarity on top of "
        "the LM's weights (fastlm/models/embedder.py).",
        "",
    ]
    if emb.get("stsb_dev_at_end") is not None:
        lines += [f"STS-B dev at the end of its training: {emb['stsb_dev_at_end']}.", ""]
    if emb.get("steps") is not None:
        lines += [f"Steps: {emb['steps']:,}.", ""]
    if isinstance(emb.get("dev"), dict):
        lines += [_dev_line(emb["dev"]), ""]
    if emb.get("command"):
        lines += ["```bash", emb["command"], "```", ""]
    return lines


def _lexical_section(manifest: dict) -> list[str]:
    """The lexical branch's facts, when the checkpoint ships one."""
    lex = manifest.get("lexical")
    if not isinstance(lex, dict):
        return []
    lines = [
        "## Lexical branch",
        "",
        "`embed()` adds hashed character n-grams of the text, projected by a learned table "
        f"(fastlm/char_ngrams.py; {lex.get('buckets', '?')} slots, weight {lex.get('weight', '?')})"
        " to the tower's unit vector, then normalises.",
        "",
    ]
    if lex.get("query_weight") not in (None, lex.get("weight")):
        lines += [
            f'Queries (`embed(texts, kind="query")`, as `rank`, `Index.search` and '
            f"`fastlm evaluate` embed them) weigh the branch {lex['query_weight']}.",
            "",
        ]
    if isinstance(lex.get("dev"), dict):
        lines += [_dev_line(lex["dev"]), ""]
    if lex.get("command"):
        lines += ["```bash", lex["command"], "```", ""]
    return lines


def _dev_line(dev: dict) -> str:
    return (
        "Dev figures of the shipped embedding: "
        + ", ".join(f"{k} {v}" for k, v in dev.items())
        + "."
    )


def _export_section(export: dict) -> list[str]:
    parity = export.get("parity") or {}
    lines = [
        "## ONNX export",
        "",
        f"Weights in {export.get('dtype', '?')}; runs with ONNX Runtime alone "
        "(`fastlm.runtime.load`).",
        "",
    ]
    if parity:
        emb, greedy = parity.get("embedding", {}), parity.get("greedy", {})
        logits, ranking = parity.get("logits", {}), parity.get("ranking", {})
        lines += [
            "Parity with the PyTorch fp32 model (parity.json):",
            "",
            "| check | value |",
            "|---|---|",
            f"| embedding cosine (min) | {emb.get('cosine_min', float('nan')):.6f} |",
            f"| logits max abs error | {logits.get('max_abs', float('nan')):.2e} |",
            f"| greedy token agreement | {greedy.get('agreement', float('nan')):.1%} |",
            f"| top-10 ranking overlap | {ranking.get('top10_overlap', float('nan')):.1%} |",
            "",
        ]
    return lines


def render_model_card(manifest: dict, config: dict, name: str, export: dict | None = None) -> str:
    """The card's Markdown. manifest/config: the checkpoint's; export: {"dtype", "parity",
    "files"} for an ONNX export directory."""
    files = (export or {}).get("files") or manifest.get("files") or {}
    dim = config.get("d_model") or config.get("hidden_dim")
    load = (
        'import fastlm.runtime\n\nmodel = fastlm.runtime.load("path/to/this/directory")'
        if export
        else f'import fastlm\n\nmodel = fastlm.load("{name}")'
    )
    lines = [
        f"# fastlm `{name}`",
        "",
        _architecture(config) + f"; byte-level BPE vocabulary of {config.get('vocab_size')} "
        f"tokens. Trained as a next-token model; also gives {dim}-d L2-normalised text "
        "embeddings.",
        "",
        "```python",
        load,
        'vecs = model.embed(["a text", "another"])',
        'text = model.generate("Once upon a time", max_new_tokens=50)  # greedy by default',
        "```",
        "",
        *_training_section(manifest),
        *_metrics_section(manifest),
        *_embedder_section(manifest),
        *_lexical_section(manifest),
        *(_export_section(export) if export else []),
        "## Intended use",
        "",
        "Small, fast models for experiments, teaching and CPU inference work: scoring text, "
        "short continuations, embeddings for ranking similar texts. They are small models "
        "trained on a narrow corpus (English books): not for factual answers, decisions about "
        "people, or text unlike the training data; generated text can be wrong or offensive.",
        "",
        "## License",
        "",
        LICENSE + ". The training data keeps its own terms.",
        "",
        "## Files (sha256)",
        "",
        *[f"- `{f}` `{digest}`" for f, digest in sorted(files.items())],
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike) -> Path:
    """Write README.md into a checkpoint or export directory from its manifest; returns it.

    The card is not listed in the manifest, so rewriting it never breaks the sha256 checks."""

    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    export = None
    if manifest.get("format", "").startswith("fastlm-onnx"):
        parity_file = directory / "parity.json"
        parity = json.loads(parity_file.read_text("utf-8")) if parity_file.is_file() else None
        export = {"dtype": manifest.get("dtype"), "parity": parity, "files": manifest.get("files")}
    name = manifest.get("name") or directory.name
    path = directory / CARD_FILE
    atomic_write_text(path, render_model_card(manifest, config, name, export))
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(write_model_card(arg))
