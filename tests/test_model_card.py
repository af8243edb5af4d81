"""Model cards: written from the manifest, current for the shipped models, safe to rewrite."""

from __future__ import annotations

import json
import shutil

from fastlm.export.model_card import CARD_FILE, render_model_card, write_model_card
from fastlm.hub import WEIGHTS_DIR, available_models


def _inputs(name: str):
    d = WEIGHTS_DIR / name
    return [json.loads((d / f).read_text("utf-8")) for f in ("manifest.json", "config.json")]


def test_shipped_cards_are_current():
    """Regenerate with `python -m fastlm.export.model_card fastlm/weights/*` after new weights."""
    assert available_models()
    for name in available_models():
        manifest, config = _inputs(name)
        card = (WEIGHTS_DIR / name / CARD_FILE).read_text(encoding="utf-8")
        assert card == render_model_card(manifest, config, manifest.get("name") or name)


def test_card_states_the_manifest_figures(tmp_path):
    shutil.copytree(WEIGHTS_DIR / "lstm", tmp_path / "lstm")
    manifest, _ = _inputs("lstm")
    manifest["test"]["ppl"], manifest["test"]["bits_per_byte"] = 12.3456, 0.98765
    (tmp_path / "lstm" / "manifest.json").write_text(json.dumps(manifest))
    card = write_model_card(tmp_path / "lstm").read_text(encoding="utf-8")
    assert "| token perplexity | 12.35 |" in card and "| bits per byte | 0.9877 |" in card
    assert f"| tokens seen | {manifest['training']['tokens_seen']:,} |" in card
    assert "`../shared/data/gutenberg_en/train-00.txt`" in card  # the data, from the command
    assert "## License" in card and "## Intended use" in card
    for name, digest in manifest["files"].items():
        assert f"- `{name}` `{digest}`" in card


def test_card_of_an_export_shows_dtype_and_parity():
    manifest, config = _inputs("transformer")
    parity = {
        "embedding": {"cosine_min": 0.99876},
        "logits": {"max_abs": 0.0123},
        "greedy": {"agreement": 0.96875},
        "ranking": {"top10_overlap": 0.9},
    }
    export = {"dtype": "int8", "parity": parity, "files": {"embed.onnx": "ab" * 32}}
    card = render_model_card(manifest, config, "transformer-int8", export)
    assert "Weights in int8" in card and "| embedding cosine (min) | 0.998760 |" in card
    assert "| greedy token agreement | 96.9% |" in card and "fastlm.runtime.load" in card
    assert f"- `embed.onnx` `{'ab' * 32}`" in card and "model.safetensors" not in card


def test_card_without_training_facts_says_so(tmp_path):
    card = render_model_card({"files": {}}, {"architecture": "lstm"}, "bare")
    assert "No training facts recorded" in card and "No test-split metrics recorded" in card


def test_card_reports_an_embedding_tower_when_shipped():
    manifest, config = _inputs("transformer")
    manifest["embedder"] = {"steps": 1200, "stsb_dev_at_end": 71.5, "command": "train-embedder"}
    card = render_model_card(manifest, config, "transformer")
    assert "## Embedding tower" in card and "STS-B dev at the end of its training: 71.5" in card
    assert "Steps: 1,200." in card and "train-embedder" in card
    assert "stsb-dev 77.0" not in card
    manifest["embedder"]["dev"] = {"stsb-dev": 77.0, "sick-trial": 68.7}
    card = render_model_card(manifest, config, "transformer")
    assert "Dev figures of the shipped embedding: stsb-dev 77.0, sick-trial 68.7." in card


def test_card_states_the_query_weight_when_it_differs():
    manifest, config = _inputs("transformer")
    manifest["lexical"] = {"buckets": 65536, "weight": 1.75, "query_weight": 1.75}
    assert "Queries (" not in render_model_card(manifest, config, "transformer")
    manifest["lexical"]["query_weight"] = 6.0
    card = render_model_card(manifest, config, "transformer")
    assert "weight 1.75" in card and "weigh the branch 6.0" in card
