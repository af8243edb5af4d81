"""The parity certificate (parity.json): how far an export is from the PyTorch fp32 model.

Measured on a fixed probe set (PROBE_TEXTS) run as one right-padded batch, so rows of 1 token
and of a 242-token text share a batch:
- logits (lm.onnx): max abs error and mean relative error sum|onnx - torch| / sum|torch| over
  real (non-pad) positions;
- embeddings (embed.onnx, pooled, before normalisation): max abs error, mean relative error,
  mean and min cosine similarity;
- ranking: each probe as a query ranks all probes by cosine; mean overlap of the top-10 sets,
  of the embedding `embed()` returns (the tower's vector mixed with the lexical branch, which
  every backend computes alike, when the checkpoint has one: queries at the branch's query
  weight, documents at its weight); `tower_top10_overlap` is the same of the tower alone;
- greedy decoding (decode.onnx): PyTorch generates GREEDY_TOKENS tokens greedily after each of
  the GREEDY_PROMPTS; the export is fed the same tokens (teacher forcing) and `agreement` is the
  fraction of steps where its argmax is PyTorch's token. `identical_prefix` is the mean number
  of tokens the export's own free-running greedy output matches before the first difference.
- finite: no NaN/inf in any output.
BOUNDS per dtype are enforced by `check`; docs/onnx.md lists them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastlm.char_ngrams import LexicalBranch
from fastlm.models.embedder import EmbeddingTower
from fastlm.runtime import OnnxModel
from fastlm.speculative import with_lookup
from fastlm.threads import torch_threads
from fastlm.tokenizer import EOT_ID, Tokenizer, pad_batch

PROBE_TEXTS = (
    "A",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little girl who lived in a village near the forest.",
    "Wendy, John and Michael flew out of the nursery window towards the Neverland.",
    "Captain Hook paced the deck of the Jolly Roger, his iron claw glinting in the moonlight.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "def mean(xs):\n    return sum(xs) / len(xs)\n",
    "3.14159 2.71828 1.41421 -42 +7 1,000,000 0x1F 1e-9",
    "Ünïcödé — 日本語のテキスト, emoji 🤖🚀, and ñ.",
    "    indented line\n\ttabbed line\n\n\nblank lines above",
    "THE END. Chapter 12: THE CHILDREN ARE CARRIED OFF",
    '"Do you believe in fairies?" she asked. "If you believe, clap your hands!"',
    "Sherlock Holmes took his bottle from the corner of the mantelpiece.",
    "the the the the the the the the the the the the",
    "Alice was beginning to get very tired of sitting by her sister on the bank, "
    "and of having nothing to do: once or twice she had peeped into the book her sister "
    "was reading, but it had no pictures or conversations in it. " * 4,
    "Peter Pan",
)
GREEDY_PROMPTS = (PROBE_TEXTS[2], PROBE_TEXTS[4], PROBE_TEXTS[9], PROBE_TEXTS[15])
GREEDY_TOKENS = 64
TOP_K = 10

# A bound is a minimum on a report value, addressed as "section.key".
BOUNDS: dict[str, dict[str, float]] = {
    "fp32": {"embedding.cosine_min": 0.99999},
    "fp16": {"embedding.cosine_min": 0.999},
    "int8": {"embedding.cosine_min": 0.99, "greedy.agreement": 0.90},
}


def certify(
    model: nn.Module,
    tokenizer: Tokenizer,
    onnx_model: OnnxModel,
    dtype: str,
    embedder=None,
    lexical: LexicalBranch | None = None,
) -> dict:
    """Compare `onnx_model` with the fp32 torch `model`; the report written as parity.json.
    `lexical`: the checkpoint's lexical branch (the ranking check mixes it in, as `embed()`).

    PyTorch runs on one thread here: the probes are small, and on a busy machine its
    multi-threaded LSTM steps measured ~1000x slower (threads waiting on each other)."""
    with torch_threads(1):
        embedder = (embedder or EmbeddingTower(model)).eval().cpu()
        return _certify(model.eval().cpu(), embedder, tokenizer, onnx_model, dtype, lexical)


def _certify(
    model, embedder, tokenizer: Tokenizer, onnx_model: OnnxModel, dtype: str, lexical=None
) -> dict:
    batch = pad_batch(tokenizer.encode_many(list(PROBE_TEXTS)))
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.inference_mode():
        ref_emb = embedder(ids, mask).numpy()
        ref_logits = model.fc(model.hidden_states(ids)[0]).numpy()
    emb = onnx_model.backend.embed_batch(batch.input_ids, batch.attention_mask)
    logits = onnx_model.backend.logits(batch.input_ids)
    real = batch.attention_mask.astype(bool)
    greedy = _greedy(model, tokenizer, onnx_model)
    report = {
        "dtype": dtype,
        "probes": len(PROBE_TEXTS),
        "probe_tokens": int(real.sum()),
        "logits": _errors(logits[real], ref_logits[real]),
        "embedding": {**_errors(emb, ref_emb), **_cosines(emb, ref_emb)},
        "ranking": _ranking(emb, ref_emb, lexical),
        "greedy": greedy.pop("summary"),
        "finite": bool(np.isfinite(emb).all() and np.isfinite(logits).all() and greedy["finite"]),
        "bounds": BOUNDS[dtype],
    }
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


def failures(report: dict) -> list[str]:
    """Human-readable list of the bounds `report` breaks (empty when it passes)."""
    out = [] if report["finite"] else ["an output holds NaN or inf"]
    for key, minimum in report["bounds"].items():
        section, name = key.split(".")
        value = report[section][name]
        if not value >= minimum:
            out.append(f"{key} = {value:.6f} is below the {report['dtype']} bound {minimum}")
    return out


def check(report: dict) -> None:
    """Raise ValueError naming every broken bound."""
    if report["failures"]:
        raise ValueError(
            f"the {report['dtype']} export fails its parity check: "
            + "; ".join(report["failures"])
            + ". Nothing was written; try a higher precision (--dtype fp32 or fp16)."
        )


def _errors(a: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(a.astype(np.float64) - ref)
    return {
        "max_abs": float(diff.max()),
        "mean_rel": float(diff.sum() / max(np.abs(ref).sum(), 1e-30)),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cosines(a: np.ndarray, ref: np.ndarray) -> dict:
    cos = (_unit(a) * _unit(ref)).sum(axis=1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def _ranking(emb: np.ndarray, ref: np.ndarray, lexical: LexicalBranch | None) -> dict:
    tower = _top_overlap(emb, emb, ref, ref)
    if lexical is None:
        return {"top10_overlap": tower}
    branch = lexical.vectors(list(PROBE_TEXTS))
    mixed = {
        kind: (lexical.mix_vectors(emb, branch, kind), lexical.mix_vectors(ref, branch, kind))
        for kind in ("query", "document")
    }
    (q, q_ref), (d, d_ref) = mixed["query"], mixed["document"]
    return {"top10_overlap": _top_overlap(q, d, q_ref, d_ref), "tower_top10_overlap": tower}


def _top_overlap(q: np.ndarray, d: np.ndarray, q_ref: np.ndarray, d_ref: np.ndarray) -> float:
    """Mean fraction of shared documents in the top-10 lists, each probe (as a query, `q`)
    ranking all probes (as documents, `d`)."""
    k = min(TOP_K, len(d))
    top_a = np.argsort(-(_unit(q) @ _unit(d).T), axis=1, kind="stable")[:, :k]
    top_r = np.argsort(-(_unit(q_ref) @ _unit(d_ref).T), axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_r)]))


@torch.inference_mode()
def _torch_greedy(model: nn.Module, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """GREEDY_TOKENS greedy tokens after `ids` and each step's logits (V,), by the model's own
    incremental path (`hidden_states` carrying its state: the LSTM's (h, c), the Transformer's
    KV cache)."""
    x = torch.tensor([ids])
    state = model.new_state(1, len(ids) + GREEDY_TOKENS)
    tokens, steps = [], []
    for _ in range(GREEDY_TOKENS):
        states, state = model.hidden_states(x, state)
        last = model.fc(states[0, -1])
        steps.append(last.numpy())
        tokens.append(int(last.argmax()))
        x = torch.tensor([[tokens[-1]]])
    return tokens, np.stack(steps)


def _greedy(model: nn.Module, tokenizer: Tokenizer, onnx_model: OnnxModel) -> dict:
    agree, total, prefixes, max_abs, finite = 0, 0, [], 0.0, True
    for prompt in GREEDY_PROMPTS:
        ids = [EOT_ID] + tokenizer.encode(prompt)
        ref_tokens, ref_logits = _torch_greedy(model, ids)
        # teacher-forced, through the guesses greedy generation checks (fastlm/speculative.py)
        forced = with_lookup(onnx_model.backend.new_decoder(len(ids) + GREEDY_TOKENS))
        logits = [forced.prefill(ids)] + [forced.step(t) for t in ref_tokens[:-1]]
        logits = np.stack(logits)
        finite &= bool(np.isfinite(logits).all())
        same = logits.argmax(axis=1) == np.array(ref_tokens)
        agree, total = agree + int(same.sum()), total + len(same)
        # Up to the first difference, free-running and teacher-forced inputs are the same.
        prefixes.append(int(np.argmin(same)) if not same.all() else len(same))
        max_abs = max(max_abs, float(np.abs(logits - ref_logits).max()))
    summary = {
        "prompts": len(GREEDY_PROMPTS),
        "tokens": GREEDY_TOKENS,
        "agreement": agree / total,
        "identical_prefix": float(np.mean(prefixes)),
        "logits_max_abs": max_abs,
    }
    return {"summary": summary, "finite": finite}
