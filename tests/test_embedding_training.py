"""Similarity training of the embedding tower: data, teacher cache, resume, shipping format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import tiny_lm as _tiny_lm
from model_helpers import tiny_tower_data as _data

from fastlm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastlm.embedding.corpus import extract_texts, paragraphs, split_sentences
from fastlm.embedding.losses import cosent_loss, similarity_mse, teacher_infonce
from fastlm.embedding.teacher import (
    TeacherCacheError,
    cached_prefix,
    load_teacher,
    teacher_vectors,
)
from fastlm.embedding.trainer import EmbedTrainConfig, TowerTrainer
from fastlm.models import SimpleLSTM_LM
from fastlm.models.embedder import new_tower


def test_paragraphs_and_sentences():
    lines = ["First line of one", "paragraph here.", "", "", "Second. Next one!  ", ""]
    assert list(paragraphs(lines)) == ["First line of one paragraph here.", "Second. Next one!"]
    assert split_sentences('He said "Hi." Then left! Did he? yes.') == [
        'He said "Hi."',
        "Then left!",
        "Did he? yes.",
    ]


def test_extract_texts_counts_what_it_skips(tmp_path):
    f = tmp_path / "book.txt"
    long_para = " ".join(["word"] * 300) + "."
    f.write_text(
        "Too short.\n\nThis sentence has exactly six words. And this one has five words.\n\n"
        + long_para
        + "\n",
        encoding="utf-8",
    )
    texts, stats = extract_texts([f], n_sentences=10, n_passages=10, seed=0)
    assert stats.paragraphs == 3
    assert stats.skipped_long == 2  # the 300-word paragraph, as passage and as its one sentence
    assert set(texts) == {
        "This sentence has exactly six words. And this one has five words.",
        "This sentence has exactly six words.",
        "And this one has five words.",
    }
    again, _ = extract_texts([f], n_sentences=10, n_passages=10, seed=0)
    assert again == texts  # deterministic for a seed


class CountingEncoder:
    def __init__(self, dim=384):
        self.calls, self.dim = 0, dim

    def __call__(self, texts):
        self.calls += 1
        rng = np.random.default_rng(len(texts))
        v = np.stack([rng.standard_normal(self.dim) + len(t) for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_teacher_cache_resumes_and_is_keyed(tmp_path, monkeypatch):
    monkeypatch.setattr("fastlm.embedding.teacher.SHARD", 4)
    texts = [f"text number {i}" for i in range(10)]  # 3 shards: 4 + 4 + 2
    enc = CountingEncoder()
    first = teacher_vectors(texts, tmp_path, encode=enc, progress=False)
    assert first.shape == (10, 384) and first.dtype == np.float16 and enc.calls == 3
    # a killed run: the last shard is missing -> only it is recomputed
    sorted(tmp_path.glob("shard-00002-*.npy"))[0].unlink()
    again = teacher_vectors(texts, tmp_path, encode=enc, progress=False)
    assert enc.calls == 4 and np.array_equal(first, again)
    # other texts in a shard: a different digest, so recomputed, never reused
    teacher_vectors(texts[:4] + ["changed"] + texts[5:], tmp_path, encode=enc, progress=False)
    assert enc.calls == 5
    with pytest.raises(TeacherCacheError, match="written by"):
        teacher_vectors(texts, tmp_path, teacher="another-teacher", encode=enc, progress=False)


def test_cached_prefix_reads_finished_shards_of_these_texts_only(tmp_path, monkeypatch):
    monkeypatch.setattr("fastlm.embedding.teacher.SHARD", 4)
    texts = [f"text number {i}" for i in range(10)]
    full = teacher_vectors(texts, tmp_path, encode=CountingEncoder(), progress=False)
    assert np.array_equal(cached_prefix(texts, tmp_path), full)
    sorted(tmp_path.glob("shard-00001-*.npy"))[0].unlink()  # a cache still being written
    assert np.array_equal(cached_prefix(texts, tmp_path), full[:4])
    with pytest.raises(TeacherCacheError, match="other texts"):
        cached_prefix(["changed"] + texts[1:], tmp_path)
    with pytest.raises(TeacherCacheError, match="not teacher"):
        cached_prefix(texts, tmp_path, teacher="another-teacher")
    with pytest.raises(TeacherCacheError, match="no meta.json"):
        cached_prefix(texts, tmp_path / "empty")


def test_the_teachers_token_limit_is_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr("fastlm.embedding.teacher.SHARD", 4)
    texts = [f"text number {i}" for i in range(6)]
    cut = teacher_vectors(texts, tmp_path, encode=CountingEncoder(), progress=False, max_tokens=128)
    assert np.array_equal(cached_prefix(texts, tmp_path, max_tokens=128), cut)
    with pytest.raises(TeacherCacheError, match="written by"):
        teacher_vectors(texts, tmp_path, encode=CountingEncoder(), progress=False)
    with pytest.raises(TeacherCacheError, match="max_tokens None"):
        cached_prefix(texts, tmp_path)
    with pytest.raises(TeacherCacheError, match="max_tokens 64"):
        cached_prefix(texts, tmp_path, max_tokens=64)


def test_teacher_missing_or_unknown(monkeypatch):
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("no-such-teacher")
    monkeypatch.setitem(
        __import__("fastlm.embedding.teacher", fromlist=["TEACHERS"]).TEACHERS,
        "ghost",
        ("fastlm_no_such_module_xyz", 384),
    )
    with pytest.raises(ImportError, match=r'pip install "fastlm\[distill\]"'):
        load_teacher("ghost")


def test_losses_prefer_the_right_answer():
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert teacher_infonce(t, t) < teacher_infonce(t.roll(1, 0), t)
    assert similarity_mse(t, t) == pytest.approx(0.0, abs=1e-6)
    u = torch.randn(4, 16)
    gold = torch.tensor([3.0, 2.0, 1.0, 0.0])
    close = torch.stack([u[0], u[1] + 0.5 * torch.randn(16), torch.randn(16), -u[3]])
    assert cosent_loss(u, close, gold) < cosent_loss(u, close.flip(0), gold)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_tower_training_resumes_bit_exactly(tmp_path, arch, dropout):
    pairs, distill = _data()
    cfg = EmbedTrainConfig(
        steps=6, warmup=2, pair_batch=4, text_batch=8, save_every=3, dropout=dropout
    )
    lm = _tiny_lm(arch)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    straight = TowerTrainer(new_tower(lm), cfg, pairs, distill, tmp_path / "a")
    straight.train(log=lambda _: None)
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())  # LM untouched

    half = TowerTrainer(
        new_tower(lm),
        EmbedTrainConfig(**{**cfg.__dict__, "steps": 3}),
        pairs,
        distill,
        tmp_path / "b",
    )
    half.train(log=lambda _: None)
    resumed = TowerTrainer(new_tower(lm), cfg, pairs, distill, tmp_path / "b")
    assert resumed.resume() and resumed.step == 3
    resumed.train(log=lambda _: None)
    for k, v in straight.tower.state_dict().items():
        assert torch.equal(v, resumed.tower.state_dict()[k]), k
    assert not torch.equal(straight.tower.proj.weight, torch.eye(16, 32))  # it did train


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_tower_ships_in_the_checkpoint(tmp_path, arch, tiny_tokenizer):
    from safetensors.torch import save_file

    vocab = tiny_tokenizer.vocab_size
    tower = new_tower(_tiny_lm(arch, vocab))
    with torch.no_grad():
        tower.proj.weight.mul_(2.0)
    path = save_checkpoint(tmp_path / "ck", _tiny_lm(arch, vocab), tiny_tokenizer, embedder=tower)
    ck = load_checkpoint(path)
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        assert torch.allclose(ck.embedder(ids, mask), tower.eval()(ids, mask), atol=1e-6)
    assert ck.weight_files == ["model.safetensors", "embedder.safetensors"]
    # a tower with a wrong-shaped tensor is a CheckpointError, not a torch traceback
    bad = tower.weights()
    bad["proj.weight"] = torch.zeros(16, 8)
    bad_path = save_checkpoint(
        tmp_path / "bad", _tiny_lm(arch, vocab), tiny_tokenizer, embedder=tower
    )
    save_file(bad, str(bad_path / "embedder.safetensors"))
    import json

    from fastlm.io import sha256_file

    m = json.loads((bad_path / "manifest.json").read_text())
    m["files"]["embedder.safetensors"] = sha256_file(bad_path / "embedder.safetensors")
    (bad_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="embedder"):
        load_checkpoint(bad_path)


def test_cloze_pairs_take_one_sentence_out(tmp_path):
    from fastlm.embedding.corpus import cloze_pairs

    para = (
        "The first sentence is about boats on the river. The second one talks about the old "
        "mill by the bridge. A third tells of rain falling over the quiet town all night long."
    )
    f = tmp_path / "book.txt"
    f.write_text(para + "\n\nToo short to use. Really.\n", encoding="utf-8")
    queries, contexts = cloze_pairs([f], n_pairs=5, seed=1)
    assert len(queries) == 1  # the short paragraph is not a source
    q, c = queries[0], contexts[0]
    assert q in para and q not in c
    assert len(q) + len(c) + 1 == len(para)  # nothing else removed


def test_tower_when_token_table_and_states_differ_in_width():
    lm = SimpleLSTM_LM(vocab_size=50, embedding_dim=24, hidden_dim=16, num_layers=1)
    tower = new_tower(lm)
    assert tower.proj.in_features == 16 + 24 and tower.dim == 16
    ids = torch.tensor([[3, 4, 5]])
    out = tower(ids, torch.ones_like(ids))
    assert out.shape == (1, 16)
    with torch.no_grad():  # the [I, 0] start is the LM's own mean of top-layer states
        states = lm.hidden_states(ids)[0].mean(1)
    assert torch.allclose(out, states, atol=1e-6)
