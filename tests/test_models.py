"""SimpleLSTM_LM and SimpleTransformer_LM: sizes, causality, state, KV cache, bad input, generate.

Expected numbers are computed here from the layer formulas, never read back from the models.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import (
    LSTMConfig,
    SimpleLSTM_LM,
    SimpleTransformer_LM,
    TransformerConfig,
)
from fastlm.threads import torch_threads

V, D, FF = 2000, 256, 512


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):  # small models: one thread is fastest on a busy machine
        yield


def _logits(model, ids):
    """Logits (B, T, V) through the model's own forward (the LSTM's also returns its state)."""
    out = model(ids)
    return out if isinstance(model, SimpleTransformer_LM) else out[0]


def _small(arch: str, **kw):
    """A small model of the real classes (same code paths, fast on a CPU)."""
    torch.manual_seed(0)
    if arch == "lstm":
        return SimpleLSTM_LM(vocab_size=97, embedding_dim=24, hidden_dim=32, **kw).eval()
    return SimpleTransformer_LM(
        vocab_size=97, d_model=32, nhead=4, num_layers=2, dim_feedforward=48, max_len=64, **kw
    ).eval()


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------- sizes and structure
def test_lstm_parameter_count():
    embedding = V * D
    # per LSTM layer: 4 gates x (W_ih (H, in) + W_hh (H, H) + b_ih (H) + b_hh (H))
    layer0 = 4 * (D * D + D * D + 2 * D)
    layer1 = 4 * (D * D + D * D + 2 * D)
    head = D * V + V
    expected = embedding + layer0 + layer1 + head
    assert expected == 2_078_672
    assert abs(expected - 2.1e6) < 0.05e6  # SPEC: ~2.1M
    assert _n_params(SimpleLSTM_LM(vocab_size=2000, embedding_dim=256, hidden_dim=256)) == expected


def test_transformer_parameter_count_and_position_buffer():
    embedding = V * D
    attention = (D * 3 * D + 3 * D) + (D * D + D)  # in-projection (q, k, v) + out-projection
    feed_forward = (D * FF + FF) + (FF * D + D)
    norms = 2 * (2 * D)  # two LayerNorms, weight + bias
    head = D * V + V
    expected = embedding + 3 * (attention + feed_forward + norms) + head
    assert expected == 2_607_312
    assert abs(expected - 2.6e6) < 0.05e6  # SPEC: ~2.6M trained

    model = SimpleTransformer_LM(vocab_size=2000, d_model=256, nhead=4, num_layers=3)
    assert _n_params(model) == expected
    assert sum(p.numel() for p in model.parameters()) == expected  # nothing frozen hides here
    buffers = dict(model.named_buffers())
    assert list(buffers) == ["pos_table"]
    table = buffers["pos_table"]
    assert tuple(table.shape) == (5000, 256) and not table.requires_grad
    assert "pos_table" not in model.state_dict()  # fixed, recomputed, never trained or saved
    assert 3.4e6 <= expected + table.numel() <= 3.9e6  # SPEC: the notes' "total"


def test_sinusoidal_table_values():
    table = SimpleTransformer_LM(vocab_size=50, d_model=16, nhead=4, num_layers=1).pos_table
    for pos in (0, 1, 7, 4999):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=2e-4)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=2e-4)


def test_spec_defaults():
    assert LSTMConfig().dropout == 0.2 and TransformerConfig().dropout == 0.2
    lstm = SimpleLSTM_LM()
    assert lstm.lstm.dropout == 0.2 and lstm.lstm.num_layers == 2
    assert not lstm.lstm.bidirectional  # SPEC (fixed): unidirectional
    tf = SimpleTransformer_LM()
    cfg = tf.config
    assert (cfg.d_model, cfg.nhead, cfg.num_layers, cfg.dim_feedforward, cfg.max_len) == (
        256,
        4,
        3,
        512,
        5000,
    )
    assert len(tf.layers) == 3
    for layer in tf.layers:
        assert layer.drop.p == 0.2 and layer.attn.dropout == 0.2
        assert layer.ff1.out_features == 512
    for model in (lstm, tf):
        w = model.embedding.weight
        assert w.abs().max() <= 0.1 and w.abs().max() > 0.09  # uniform [-0.1, 0.1]


def test_transformer_input_is_scaled_embedding_plus_positions():
    model = _small("transformer")
    ids = torch.randint(0, 97, (2, 9))
    seen = {}
    hook = model.layers[0].attn.qkv.register_forward_pre_hook  # the first op on the rows
    hook(lambda m, args: seen.setdefault("x", args[0]))
    model(ids)
    pos = torch.arange(9, dtype=torch.float32).unsqueeze(1)
    i = torch.arange(0, 32, 2, dtype=torch.float32)
    pe = torch.zeros(9, 32)
    pe[:, 0::2] = torch.sin(pos / 10000 ** (i / 32))
    pe[:, 1::2] = torch.cos(pos / 10000 ** (i / 32))
    expected = model.embedding.weight[ids] * math.sqrt(32) + pe
    torch.testing.assert_close(seen["x"].view(2, 9, 32), expected, atol=1e-5, rtol=1e-5)


def _reference_attention(attn, x):
    """Explicit matmul + causal mask + fp32 softmax, from the module's own projections."""
    B, T, C = x.shape
    nh = attn.nhead
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=2)
    q, k, v = (t.reshape(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // nh)  # (B, NH, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    y = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    return y.transpose(1, 2).reshape(B, T, C) @ attn.out.weight.T + attn.out.bias


def test_post_norm_layer_structure():
    """Each block is x = LN(x + attn(x)); x = LN(x + FF(x)) (LayerNorm after the residual add)."""
    model = _small("transformer")
    x = torch.randn(2, 7, 32) * 3 + 1
    for layer in model.layers:
        h = F.layer_norm(
            x + _reference_attention(layer.attn, x), (32,), layer.norm1.weight, layer.norm1.bias
        )
        ff = F.relu(h @ layer.ff1.weight.T + layer.ff1.bias) @ layer.ff2.weight.T + layer.ff2.bias
        expected = F.layer_norm(h + ff, (32,), layer.norm2.weight, layer.norm2.bias)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    # post-norm consequence: with LayerNorm at its initial (1, 0), every output row is normalised
    with torch.no_grad():
        top = model.hidden_states(torch.randint(0, 97, (1, 11)))[0]
    torch.testing.assert_close(top.mean(-1), torch.zeros(1, 11), atol=1e-5, rtol=0)
    torch.testing.assert_close(top.var(-1, unbiased=False), torch.ones(1, 11), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------- causality and state
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_causal(arch):
    """Changing token t+1 never changes the logits at positions <= t (and does change t+1)."""
    model = _small(arch)
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        base = _logits(model, ids)
        for t in range(12):
            changed = ids.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1 + t) % 97
            out = _logits(model, changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_lstm_state_carry():
    model = _small("lstm")
    ids = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        full, (h, c) = model(ids)
        first, state = model(ids[:, :9])
        second, (h2, c2) = model(ids[:, 9:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(h2, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2, c, atol=1e-5, rtol=0)
    assert h.shape == c.shape == (2, 3, 32)


def test_lstm_bad_state():
    model = _small("lstm")
    ids = torch.randint(0, 97, (2, 4))
    with pytest.raises(ValueError, match="shape"):
        model(ids, model.new_state(3))
    with pytest.raises(TypeError, match="tuple"):
        model(ids, torch.zeros(2, 2, 32))


def test_transformer_kv_cache_equals_full_forward():
    model = _small("transformer")
    ids = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(batch=2, max_seq=20)
        pieces, start = [], 0
        for size in (5, 1, 3, 1, 7):  # prefill, then steps and chunks of odd sizes
            states, state = model.hidden_states(ids[:, start : start + size], state)
            pieces.append(model.fc(states))
            start += size
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert int(state.length) == 17
    with pytest.raises(ValueError, match="position table"):
        model.new_state(batch=1, max_seq=65)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
@pytest.mark.parametrize("static", [False, True])
def test_step_module_equals_full_forward(arch, static):
    """The decode step (weights in addmm layout; static: the whole cache under a mask) gives the
    full forward's logits token after token, its state carried from a plain prefill."""
    model = _small(arch)
    ids = torch.randint(0, 97, (1, 12))
    step = model.step_module(static=static)
    with torch.no_grad():
        full = _logits(model, ids)
        _, state = model.hidden_states(ids[:, :5], model.new_state(1, 16))
        for t in range(5, 12):
            logits, state = step(ids[0, t : t + 1], state)
            torch.testing.assert_close(logits[0], full[0, t], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- bad input
def test_input_longer_than_position_table():
    model = _small("transformer")
    with pytest.raises(ValueError, match="position table"):
        model(torch.zeros(1, 65, dtype=torch.long))
    assert model(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 97)
    spec = SimpleTransformer_LM()
    with pytest.raises(ValueError, match="position table"):
        spec(torch.zeros(1, 5001, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds"):
        model.generate([1, 2], max_length=65)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_bad_input_ids(arch):
    model = _small(arch)
    for bad in (-1, 97, 10_000):
        ids = torch.tensor([[1, 2, bad]])
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
            model(ids)
    with pytest.raises(ValueError, match="2-D"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="2-D"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64 or int32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    assert _logits(model, torch.tensor([[1, 2, 96]], dtype=torch.int32)).shape == (1, 3, 97)


# ---------------------------------------------------------------------- generate
def _greedy_reference(model, start, max_length):
    """Greedy decoding written out: full forward in eval mode, argmax of the last position."""
    ids = list(start)
    with torch.no_grad():
        while len(ids) < max_length:
            ids.append(int(_logits(model, torch.tensor([ids]))[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_generate_greedy_is_deterministic(arch):
    model = _small(arch).train()  # freshly built models are in training mode (dropout on)
    a = model.generate([1, 2, 3], max_length=25, temperature=0)
    b = model.generate(start_tokens=[1, 2, 3], max_length=25, temperature=0)
    assert a == b and len(a) == 25 and a[:3] == [1, 2, 3]
    assert model.training  # the caller's mode is restored
    model.eval()
    assert a == _greedy_reference(model, [1, 2, 3], 25)
    assert model.generate(torch.tensor([1, 2, 3]), max_length=25, temperature=0) == a


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_generate_seed_reproducible(arch):
    model = _small(arch).train()
    a = model.generate([5], max_length=30, temperature=1.0, seed=123)
    b = model.generate([5], max_length=30, temperature=1.0, seed=123)
    c = model.generate([5], max_length=30, temperature=1.0, seed=124)
    assert a == b
    assert a != c
    assert all(0 <= t < 97 for t in a)
    top1 = model.generate([5], max_length=30, temperature=1.0, top_k=1, seed=9)
    assert top1 == model.generate([5], max_length=30, temperature=0)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_generate_bad_arguments(arch):
    model = _small(arch)
    with pytest.raises(ValueError, match="start_tokens is empty"):
        model.generate([], max_length=5)
    with pytest.raises(ValueError, match="max_length"):
        model.generate([1], max_length=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], max_length=5, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate([1], max_length=5, top_k=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([97], max_length=5)
