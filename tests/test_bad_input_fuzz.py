"""Property-based fuzzing (hypothesis) of the API and of the JSON a checkpoint carries.

The property everywhere: any input gives either a documented result or a TypeError/ValueError
(CheckpointError for a checkpoint) whose message names the offending argument or file; never
another exception type, a NaN, or a silently accepted bad value.
"""

from __future__ import annotations

import json
import math
import numbers
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlm
from fastlm.checkpoint import CheckpointError, check_manifest_files, verify_checkpoint
from fastlm.limits import MAX_LAYERS, MAX_VOCAB, MAX_WIDTH
from fastlm.models.config import config_from_dict
from fastlm.validation import check_float, check_int

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
anything = (
    json_values | st.binary(max_size=4) | st.sampled_from([object(), [1.5], {1}, np.int64(3)])
)


# ---------------------------------------------------------------------- validation module
@FUZZ
@given(value=anything, lo=st.integers(-5, 5))
def test_check_int_accepts_exactly_ints_in_range(value, lo):
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    try:
        out = check_int(value, "n", min=lo)
    except TypeError as err:
        assert not is_int and "n must be an int" in str(err)
    except ValueError as err:
        assert is_int and value < lo and "n must be >=" in str(err)
    else:
        assert is_int and out == value and type(out) is int and out >= lo


@FUZZ
@given(value=anything)
def test_check_float_accepts_exactly_finite_numbers_in_range(value):
    is_num = isinstance(value, int | float | np.integer) and not isinstance(value, bool)
    try:
        out = check_float(value, "x", min=0.0, max=1.0, max_open=True)
    except TypeError:
        assert not is_num
    except ValueError as err:
        assert is_num and (not math.isfinite(value) or not 0 <= value < 1) and "x must" in str(err)
    else:
        assert is_num and 0.0 <= out < 1.0


# ---------------------------------------------------------------------- config JSON
config_keys = st.sampled_from(
    ["architecture", "vocab_size", "embedding_dim", "hidden_dim", "num_layers", "dropout",
     "d_model", "nhead", "dim_feedforward", "max_len", "other"]
)  # fmt: skip
config_values = st.integers(-3, 10**7) | json_scalars | st.sampled_from(["lstm", "transformer"])


@FUZZ
@given(data=st.dictionaries(config_keys, config_values, max_size=8) | json_values)
def test_config_json_is_bounded_or_refused(data):
    """Whatever config.json holds: a config within the bounds, or TypeError/ValueError."""
    try:
        cfg = config_from_dict(data)
    except (TypeError, ValueError):
        return
    assert cfg.vocab_size <= MAX_VOCAB and cfg.embed_dim <= MAX_WIDTH
    assert 1 <= cfg.num_layers <= MAX_LAYERS and 0 <= cfg.dropout < 1
    for name, value in cfg.to_dict().items():
        assert not isinstance(value, bool), name


# ---------------------------------------------------------------------- manifest JSON
names = st.sampled_from(
    ["model.safetensors", "config.json", "tokenizer.json", "../x", "/etc/passwd", "a/b", "", ".."]
) | st.text(max_size=10)
digests = st.sampled_from(["0" * 64, "A" * 64, "abc"]) | json_scalars
manifests = (
    st.fixed_dictionaries({"files": st.dictionaries(names, digests, max_size=4)}) | json_values
)


@FUZZ
@given(manifest=manifests)
def test_manifest_schema_accepts_only_plain_names_and_hex_digests(manifest, tmp_path):
    try:
        files = check_manifest_files(manifest, tmp_path / "manifest.json")
    except CheckpointError:
        return
    assert files
    for name, digest in files.items():
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
        assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


@pytest.fixture(scope="module")
def ckpt_copy(small_checkpoints, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fuzz") / "ckpt"
    shutil.copytree(small_checkpoints["lstm"], dst)
    return dst


@settings(FUZZ, max_examples=25)
@given(manifest=manifests)
def test_fuzzed_manifest_never_verifies_a_checkpoint(manifest, ckpt_copy):
    """The real files with a fuzzed manifest: always CheckpointError (no fuzzed manifest lists
    the right sha256 of every file), never another exception, never a file read outside."""
    (ckpt_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        verify_checkpoint(ckpt_copy)


# ---------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def model(small_checkpoints):
    return fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)


texts = st.lists(
    st.text(max_size=12) | st.integers() | st.none() | st.binary(max_size=3), max_size=4
)


@FUZZ
@given(items=texts, batch_size=anything | st.integers(-2, 4))
def test_embed_any_input(model, items, batch_size):
    try:
        out = model.embed(items, batch_size=batch_size)
    except TypeError as err:
        assert "texts[" in str(err) or "batch_size" in str(err)
        return
    except ValueError as err:
        assert "UTF-8" in str(err) or "batch_size" in str(err)
        return
    assert out.shape == (len(items), 256) and out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    assert np.isfinite(out).all()
    for text, norm in zip(items, norms):
        assert (abs(norm - 1) < 1e-5) if model.tokenizer.encode(text) else norm == 0


# what a refused generate() call's message names: an argument, or the prompt's ids or text
GENERATE_ARGS = (
    "prompt",
    "token ids",
    "UTF-8",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
)


@FUZZ
@given(
    # valid values are listed twice so that whole calls succeed often enough to be checked
    prompt=st.text(max_size=6) | st.text(max_size=6) | st.lists(st.integers(-2, 2100)) | anything,
    max_new_tokens=st.integers(1, 3) | st.integers(-1, 3) | anything,
    temperature=st.floats(0, 2) | st.floats(allow_nan=True, allow_infinity=True) | anything,
    top_k=st.none() | st.integers(-1, 3000) | anything,
    top_p=st.none() | st.none() | st.floats() | anything,
    seed=st.none() | st.integers(0, 99) | st.integers(-1, 2**64) | anything,
)
def test_generate_any_arguments(model, prompt, max_new_tokens, temperature, top_k, top_p, seed):
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        out = model.generate(prompt, max_new_tokens=max_new_tokens, **kw)
    except (TypeError, ValueError) as err:
        assert any(name in str(err) for name in GENERATE_ARGS), err  # names what was wrong
        return
    assert isinstance(out, str) if isinstance(prompt, str) else isinstance(out, list)
    if max_new_tokens is not None:  # None: the documented default (50)
        assert isinstance(max_new_tokens, numbers.Integral) and 1 <= max_new_tokens
    assert not isinstance(max_new_tokens, bool) and not isinstance(temperature, bool)
    assert isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature >= 0


@FUZZ
@given(items=texts, batch_size=st.integers(-2, 3) | anything)
def test_score_any_input(model, items, batch_size):
    try:
        results = model.score(items, batch_size=batch_size)
    except (TypeError, ValueError) as err:
        assert any(s in str(err) for s in ("texts[", "batch_size", "UTF-8"))
        return
    assert isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool)
    assert batch_size >= 1
    for text, r in zip(items, results):
        assert r.bytes == len(text.encode("utf-8"))
        assert r.tokens == 0 or (r.log_likelihood < 0 and math.isfinite(r.perplexity))
