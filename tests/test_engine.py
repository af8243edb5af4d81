"""The inference engine (eager backend): embed / generate / score / rank / Index, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import run_in_threads

import fastlm
from fastlm.models.layers import NextTokenLogits
from fastlm.tokenizer import EOT_ID

ARCHS = ["lstm", "transformer"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, small_checkpoints):
    return fastlm.load(small_checkpoints[request.param], backend="eager")


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "   ",
    "Once upon a time there was a little girl who lived in a village near the forest. " * 3,
    "Ünïcödé — 日本語のテキスト 🤖",
    "",
    "short",
]


def _reference_embedding(model, text: str) -> np.ndarray:
    """Plain computation, independent of the engine's batching: one text alone through the
    embedding tower's encoder, the mean of its top-layer states, then its projection; plus the
    lexical branch's unit vector times its weight when the model has one."""
    ids = model.tokenizer.encode(text)
    if not ids:
        return np.zeros(model.embedding_dim, np.float32)
    branch = model.backend.lexical
    tower = model.backend.checkpoint.embedder
    with torch.no_grad():
        states = tower.encoder.hidden_states(torch.tensor([ids]))[0]
        pooled = states[0].mean(0, keepdim=True)  # (1, C)
        if tower.proj is not None:
            tokens = tower.encoder.embedding(torch.tensor(ids)).mean(0, keepdim=True)
            pooled = tower.proj(torch.cat([pooled, tokens], dim=1))
        vec = pooled[0].numpy()
    vec = vec / np.linalg.norm(vec)
    if branch is not None:
        vec = vec + branch.weight * branch.vectors([text])[0]
    return vec / np.linalg.norm(vec)


def test_embed_matches_unbatched_reference(model):
    vecs = model.embed(TEXTS, batch_size=3)
    assert vecs.shape == (len(TEXTS), 256) and vecs.dtype == np.float32
    for text, vec in zip(TEXTS, vecs):
        ref = _reference_embedding(model, text)
        np.testing.assert_allclose(vec, ref, atol=2e-5, err_msg=repr(text))


def test_embed_independent_of_batch_company(model):
    """A text's embedding does not depend on what else is in its batch (tolerance 1e-5)."""
    alone = model.embed(["a lonely sentence about the sea"])[0]
    crowd = model.embed(["x " * 200, "a lonely sentence about the sea", "y"], batch_size=3)[1]
    np.testing.assert_allclose(alone, crowd, atol=1e-5)


def test_embed_shapes_and_edge_cases(model):
    assert model.embed([]).shape == (0, 256)
    single = model.embed("hello world")
    assert single.shape == (256,)
    empty = model.embed("")
    assert np.all(empty == 0)  # documented: no tokens -> zero vector, never NaN
    ws = model.embed(["   ", "\n\t"])
    assert np.all(np.isfinite(ws)) and np.allclose(np.linalg.norm(ws, axis=1), 1, atol=1e-5)
    raw = model.embed(["hello world"], normalize=False)
    assert not np.isclose(np.linalg.norm(raw), 1.0)
    t = model.embed(["hello"], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (1, 256)


def test_embed_bad_input(model):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.embed(["ok", 3])
    with pytest.raises(TypeError):
        model.embed(None)
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        model.embed([None])
    with pytest.raises(ValueError, match="UTF-8"):
        model.embed(["bad \ud800 surrogate"])
    with pytest.raises(ValueError):
        model.embed(["x"], batch_size=0)


def test_embed_max_length_truncates_like_a_cut_text(small_checkpoints):
    m = fastlm.load(small_checkpoints["transformer"])
    long_text = "word " * 600  # longer than the embedding window: windowed (tests/test_long_texts)
    cut = m.embed([long_text], max_length=20)
    ids = m.tokenizer.encode(long_text)[:20]
    np.testing.assert_allclose(cut[0], m.embed([m.tokenizer.decode(ids)])[0], atol=1e-5)


def test_progress_bar_default(model, capsys):
    model.embed(["a"] * 5)
    assert "embed" not in capsys.readouterr().err


# ---------------------------------------------------------------------- generate
def test_greedy_cached_equals_naive(model):
    prompt = model.tokenizer.encode("It was a dark and stormy night")
    naive = model.backend.model.generate(prompt, max_length=len(prompt) + 40, temperature=0)
    fast = model.generate(start_tokens=prompt, max_length=len(prompt) + 40, temperature=0)
    # the engine stops at <|endoftext|>; the naive path does not
    stop = naive.index(EOT_ID, len(prompt)) if EOT_ID in naive[len(prompt) :] else len(naive)
    assert fast == naive[:stop]


def test_generate_text_and_stream(model):
    text = model.generate("Once upon a time", max_new_tokens=20, temperature=0)
    assert isinstance(text, str)
    pieces = list(model.generate("Once upon a time", max_new_tokens=20, temperature=0, stream=True))
    assert "".join(pieces) == text
    ids = list(model.generate([5, 6, 7], max_new_tokens=10, temperature=0, stream=True))
    assert ids == model.generate([5, 6, 7], max_new_tokens=10, temperature=0)


def test_generate_seed_reproducible(model):
    a = model.generate("The", max_new_tokens=15, temperature=1.0, top_k=50, seed=3)
    b = model.generate("The", max_new_tokens=15, temperature=1.0, top_k=50, seed=3)
    assert a == b
    c = model.generate("The", max_new_tokens=15, temperature=1.0, top_p=0.9, seed=3)
    assert isinstance(c, str)


def test_generate_stop_string(model):
    """Greedy text ends where a stop string first occurs (the stop excluded); a stop that never
    occurs changes nothing. The stops are cut from the greedy text itself (at its start, middle
    and end), so the test holds whatever the model generates, however short."""
    prompt, opts = "Once upon a time", dict(max_new_tokens=30, temperature=0)
    full = model.generate(prompt, **opts)
    never = full + "\x00"  # longer than the text: cannot occur in it
    assert model.generate(prompt, stop=never, **opts) == full
    starts = {0, len(full) // 2, max(len(full) - 2, 0)}
    stops = {full[i : i + 2] for i in starts} - {""}
    for stop in sorted(stops):
        cut = model.generate(prompt, stop=stop, **opts)
        assert cut == full[: full.find(stop)], repr(stop)
        assert model.generate(prompt, stop=[never, stop], **opts) == cut, repr(stop)


def test_generate_bad_input(model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate("hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("hi", max_new_tokens=3, temperature=-1)
    for top_p in (0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            model.generate("hi", max_new_tokens=3, top_p=top_p)
    with pytest.raises(TypeError):
        model.generate(None, max_new_tokens=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([99999], max_new_tokens=3)
    with pytest.raises(ValueError, match="empty"):
        model.generate([], max_new_tokens=3)


def test_prompt_longer_than_context(small_checkpoints):
    m = fastlm.load(small_checkpoints["transformer"])
    with pytest.raises(ValueError, match="context"):
        m.generate([5] * 4990, max_new_tokens=20)


# ---------------------------------------------------------------------- score / rank
def test_score_matches_direct_nll(model):
    text = "The cat sat on the mat."
    res = model.score(text)
    ids = [EOT_ID] + model.tokenizer.encode(text)
    net = model.backend.model
    with torch.no_grad():
        logits = NextTokenLogits(net)(torch.tensor([ids]))
        logp = torch.log_softmax(logits[0, :-1], -1).gather(1, torch.tensor(ids[1:])[:, None])
    assert res.tokens == len(ids) - 1 and res.bytes == len(text.encode())
    assert res.log_likelihood == pytest.approx(float(logp.sum()), rel=1e-4)
    assert res.bits_per_byte == pytest.approx(-float(logp.sum()) / np.log(2) / res.bytes, rel=1e-4)
    batch = model.score([text, "", "another one"])
    assert batch[0].log_likelihood == pytest.approx(res.log_likelihood, rel=1e-4)
    assert (batch[1].tokens, batch[1].perplexity, batch[1].bits_per_byte) == (0, 1.0, 0.0)


def test_rank_and_index(model, tmp_path):
    docs = [
        "the ship sailed across the sea",
        "a recipe for bread",
        "waves and the ocean",
        "tax forms",
    ]
    hits = model.rank("the sea and the ocean", docs, top_k=2)
    assert len(hits) == 2 and hits[0]["score"] >= hits[1]["score"]
    scores = model.embed(docs) @ model.embed("the sea and the ocean")
    assert hits[0]["corpus_id"] == int(np.argmax(scores))
    assert model.rank("q", []) == []
    index = fastlm.Index(model, lexical=False).add(docs)
    found = index.search("the sea and the ocean", top_k=2)
    assert [(int(h["id"]), h["score"], h["text"]) for h in found] == [
        (h["corpus_id"], pytest.approx(h["score"], abs=1e-6), h["text"]) for h in hits
    ]
    index.save(tmp_path / "idx")
    again = fastlm.Index.load(tmp_path / "idx", model)
    assert again.search("the sea and the ocean", top_k=2) == found


def test_threads_give_serial_results(model):
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(24)]
    serial_emb = model.embed(texts, batch_size=5)
    serial_gen = model.generate("The", max_new_tokens=12, temperature=0)
    results = run_in_threads(
        lambda: (
            model.embed(texts, batch_size=5),
            model.generate("The", max_new_tokens=12, temperature=0),
        )
    )
    for emb, gen in results:
        np.testing.assert_allclose(emb, serial_emb, atol=1e-6)
        assert gen == serial_gen


# ---------------------------------------------------------------------- load
def test_load_errors(small_checkpoints):
    with pytest.raises(ValueError, match="unknown model"):
        fastlm.load("no-such-model")
    with pytest.raises(ValueError, match="unknown backend"):
        fastlm.load(small_checkpoints["lstm"], backend="warp-drive")
    with pytest.raises(TypeError):
        fastlm.load(small_checkpoints["lstm"], backend=3)
    with pytest.raises(ValueError, match="threads"):
        fastlm.load(small_checkpoints["lstm"], threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            fastlm.load(small_checkpoints["lstm"], device="cuda")


# ---------------------------------------------------------------------- threads
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_threads_apply_to_the_model_calls_only(small_checkpoints, arch):
    """load(threads=n) runs the model's torch calls on n threads and never leaves torch's
    process-wide count changed (neither at load nor after a call)."""
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    model = fastlm.load(small_checkpoints[arch], threads=want)
    assert torch.get_num_threads() == before
    seen = []
    real = model.backend.model.hidden_states

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    model.backend.model.hidden_states = spy
    model.score("the cat sat on the mat")
    model.generate("the cat", max_new_tokens=3)
    assert seen and set(seen) == {want}
    assert torch.get_num_threads() == before
