"""Byte-level BPE tokenizer: size, special ids, lossless round trip, batching, files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlm.tokenizer import EOT_ID, PAD_ID, Tokenizer

# Characters hypothesis rarely draws on its own, mixed in so every run sees them.
EXOTIC = list("日本語中文한국어🤖👍🏽👨‍👩‍👧\u200d\ufeff\ufffd\x00\x01\x1f\x7f\x85\r\n\t\u2028é́")
ANY_CHAR = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(EXOTIC))


def test_vocabulary_and_special_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.vocab_size == 2000
    assert (tok.pad_id, tok.eot_id) == (0, 1) == (PAD_ID, EOT_ID)
    assert tok.decode([0, 1], skip_special_tokens=False) == "<pad><|endoftext|>"
    assert tok.decode([0, 1]) == ""  # dropped by default
    assert tok.decode([1999], skip_special_tokens=False)  # the last id exists
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([2000])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ANY_CHAR, max_size=60))
def test_round_trip_any_text(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert all(0 <= i < 2000 for i in ids)
    assert tiny_tokenizer.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=ANY_CHAR, max_size=30), max_size=5))
def test_batch_round_trip_any_texts(tiny_tokenizer, texts):
    batch = tiny_tokenizer.encode_batch(texts)
    for row, text in enumerate(texts):
        n = int(batch.attention_mask[row].sum())
        assert tiny_tokenizer.decode(batch.input_ids[row, :n]) == text


@pytest.mark.parametrize("text", ["\ud800", "abc\udfffdef", "🤖\udc80"])
def test_lone_surrogates_raise(tiny_tokenizer, text):
    with pytest.raises(ValueError, match="surrogate"):
        tiny_tokenizer.encode(text)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tiny_tokenizer.encode_batch(["fine", text])


@pytest.mark.parametrize("typed", ["<|endoftext|>", "<pad>", "a<|endoftext|>b<pad>"])
def test_typed_special_tokens_are_plain_text(tiny_tokenizer, typed):
    ids = tiny_tokenizer.encode(typed)
    assert EOT_ID not in ids and PAD_ID not in ids
    assert tiny_tokenizer.decode(ids) == typed


def test_encode_batch_pads_to_longest_with_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = ["a", "The quick brown fox jumps over the lazy dog.", "", "hello"]
    singles = [tok.encode(t) for t in texts]
    longest = max(len(s) for s in singles)
    batch = tok.encode_batch(texts)
    assert batch.input_ids.shape == batch.attention_mask.shape == (4, longest)
    assert batch.input_ids.dtype == np.int64
    for row, ids in enumerate(singles):
        n = len(ids)
        assert batch.input_ids[row, :n].tolist() == ids
        assert (batch.input_ids[row, n:] == PAD_ID).all()
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (longest - n)
    assert batch.lengths.tolist() == [len(s) for s in singles]
    # dynamic padding: a batch of short texts stays short
    assert tok.encode_batch(["a", "b"]).input_ids.shape[1] == 1


def test_encode_batch_max_length_truncates(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = ["one two three four five six seven eight nine ten", "hi"]
    full = [tok.encode(t) for t in texts]
    assert len(full[0]) > 4
    batch = tok.encode_batch(texts, max_length=4)
    assert batch.input_ids.shape == (2, 4)
    assert batch.input_ids[0].tolist() == full[0][:4]
    assert batch.lengths.tolist() == [4, len(full[1])]
    # max_length above the longest text does not pad further
    assert tok.encode_batch(["hi"], max_length=100).input_ids.shape == (1, len(full[1]))
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(texts, max_length=0)


def test_encode_batch_empty_list(tiny_tokenizer):
    batch = tiny_tokenizer.encode_batch([])
    assert batch.input_ids.shape == (0, 0) and batch.attention_mask.shape == (0, 0)
    assert tiny_tokenizer.encode_many([]) == []


def test_non_str_items_are_type_errors(tiny_tokenizer):
    tok = tiny_tokenizer
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        tok.encode_batch(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        tok.encode_batch([b"bytes"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_many(["a", None])
    with pytest.raises(TypeError, match="single str"):
        tok.encode_batch("not a list")
    with pytest.raises(TypeError):
        tok.encode(42)


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    tiny_tokenizer.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # one file, no temp left
    json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == 2000
    text = "Round trip: Ünïcödé 日本語 🤖 <|endoftext|>\n"
    assert loaded.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.encode("<|endoftext|>") == tiny_tokenizer.encode("<|endoftext|>")
    assert EOT_ID not in loaded.encode("<|endoftext|>")


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"version": "1.0"}', b"\xff\xfe\x00garbage", b"[1, 2, 3]"],
    ids=["bad-json", "empty", "not-a-tokenizer", "binary", "json-list"],
)
def test_load_corrupt_file_is_value_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(path)


def test_load_truncated_file_is_value_error(tiny_tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        Tokenizer.load(path)


def test_load_rejects_wrong_special_ids(tiny_tokenizer, tmp_path):
    data = json.loads(tiny_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab["<pad>"], vocab["<|endoftext|>"] = vocab["<|endoftext|>"], vocab["<pad>"]
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="must map"):
        Tokenizer.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")


@pytest.mark.parametrize("vocab_size", [0, 2, 257])
def test_vocab_size_too_small(tiny_data, vocab_size):
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train([tiny_data / "train.txt"], vocab_size=vocab_size)


def test_train_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no files"):
        Tokenizer.train([], vocab_size=2000)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Tokenizer.train([tmp_path / "missing.txt"], vocab_size=2000)
