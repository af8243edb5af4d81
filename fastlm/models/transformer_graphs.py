"""The Transformer's decode.onnx: one step (or a prompt chunk) over a KV cache updated in place.

decode.onnx takes

    input_ids (B, T) int64, position_ids (B, T) int64 (the tokens' positions),
    seqlens_k (B,) int32 (position of the last token), total_sequence_length () int32
    (tokens in the cache after this run), logits_index (K,) int64 (the positions among the T
    whose logits are wanted: the last for a step or a prompt chunk, all T to verify a draft),
    past_key_<i>, past_value_<i> (B, NH, S, Dh) per layer

and returns those positions' logits (B, K, V) and present_key_<i>, present_value_<i>, the same
(B, NH, S, Dh) caches with the T new keys and values written at their positions. A decoder
rewinds by feeding smaller positions: entries past a query's own position are never read.
Attention is ONNX Runtime's fused `com.microsoft::GroupQueryAttention` (as many key/value heads
as query heads, q, k, v packed): when a decoder binds present_* to the very buffers it feeds as
past_* (IO binding), the cache is written in place and nothing of the past is copied per token.
S is the decoder's choice (the generation's length), fixed for one generation. The layers are
the model's own `block`; only attention is the fused op. Used by the export only
(fastlm/export).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastlm.models.transformer import SimpleTransformer_LM, block
from fastlm.ort.format import CONTROL_INPUTS


class GroupQueryAttention(torch.autograd.Function):
    """ONNX Runtime's GroupQueryAttention with kv_num_heads = num_heads, on a shared cache.

    forward is its reference in PyTorch (what tracing runs; every row of the batch at the same
    length): qkv (B, T, 3C) packed as [q | k | v] with heads side by side (the op's packed
    form: no Split node), the caches (B, NH, S, D), the new keys written at positions
    total - T .. total - 1, each query attending causally over the cache up to its own
    position. Returns (out (B, T, C), present_key, present_value)."""

    @staticmethod
    def forward(ctx, qkv, past_key, past_value, seqlens_k, total, num_heads: int):
        B, T, C3 = qkv.shape
        C = C3 // 3
        D = C // num_heads
        start = int(total) - T
        q, k, v = qkv.split(C, dim=2)

        def heads(x):
            return x.reshape(B, T, num_heads, D).transpose(1, 2)  # (B, NH, T, D)

        present_key, present_value = past_key.clone(), past_value.clone()
        present_key[:, :, start : start + T] = heads(k)
        present_value[:, :, start : start + T] = heads(v)
        keys, values = present_key[:, :, : start + T], present_value[:, :, : start + T]
        att = heads(q) @ keys.transpose(2, 3) / math.sqrt(D)  # (B, NH, T, start + T)
        q_pos = torch.arange(T).unsqueeze(1) + start
        att = att.masked_fill(torch.arange(start + T).unsqueeze(0) > q_pos, float("-inf"))
        out = (att.softmax(dim=-1) @ values).transpose(1, 2).reshape(B, T, C)
        return out, present_key, present_value

    @staticmethod
    def symbolic(g, qkv, past_key, past_value, seqlens_k, total, num_heads: int):
        # key and value are the op's optional inputs, left empty when the query is packed
        missing = g.op("prim::Constant")
        missing.setType(torch._C.OptionalType.ofTensor())
        out, key, value = g.op(
            "com.microsoft::GroupQueryAttention",
            qkv,
            missing,
            missing,
            past_key,
            past_value,
            seqlens_k,
            total,
            num_heads_i=num_heads,
            kv_num_heads_i=num_heads,
            outputs=3,
        )
        # ONNX has no shape inference for the contrib op: the outputs are shaped as their inputs
        _, heads, _, head_dim = past_key.type().varyingSizes()  # (B, NH, S, D) -> (B, T, NH*D)
        out.setType(past_key.type().with_sizes([None, None, heads * head_dim]))
        key.setType(past_key.type())
        value.setType(past_value.type())
        return out, key, value


class TransformerDecodeGraph(nn.Module):
    """decode.onnx (module docstring): forward(input_ids, position_ids, seqlens_k,
    total_sequence_length, logits_index, past_key_0, past_value_0, past_key_1, ...) ->
    (logits (B, K, V), present_key_0, present_value_0, ...)."""

    onnx_opsets = {"com.microsoft": 1}  # the custom op domain its export declares
    onnx_fold = False  # keep W (not W^T) in the graph: fastlm/export/onnx_export.py

    def __init__(self, model: SimpleTransformer_LM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, seqlens_k, total, logits_index, *past):
        m = self.model
        x = m.embed_tokens(input_ids, position_ids)  # (B, T, C)
        presents = []
        for i, layer in enumerate(m.layers):

            def attend(qkv, i=i, nhead=layer.attn.nhead):
                out, key, value = GroupQueryAttention.apply(
                    qkv, past[2 * i], past[2 * i + 1], seqlens_k, total, nhead
                )
                presents.extend((key, value))
                return out

            x = block(layer, x, attend, packed=True)
        # the head (V x C, the largest matmul) only on the positions asked for
        return (m.fc(x.index_select(1, logits_index)), *presents)


def decode_graph(model: SimpleTransformer_LM, batch: int):
    """(graph, example inputs after input_ids, their dynamic axes, the outputs' dynamic axes),
    what `Architecture.decode_graph` returns. Traced with 2 cached tokens before the example
    ids, in a cache of 16 (S stays symbolic: "cache")."""
    cfg = model.config
    T, S, start = 5, 16, 2  # the export's example ids are (batch, 5)
    positions = (torch.arange(T) + start).expand(batch, T)
    seqlens_k = torch.full((batch,), start + T - 1, dtype=torch.int32)
    total = torch.tensor(start + T, dtype=torch.int32)
    logits_index = torch.arange(T)
    cache = torch.zeros(batch, cfg.nhead, S, cfg.d_model // cfg.nhead)
    past = [cache.clone() for _ in range(2 * cfg.num_layers)]
    names = [f"{kind}_{i}" for i in range(cfg.num_layers) for kind in ("key", "value")]
    cache_axes = {0: "batch", 2: "cache"}
    controls = {"position_ids": {0: "batch", 1: "seq"}, "seqlens_k": {0: "batch"}}
    inputs = {
        **controls,
        "total_sequence_length": {},
        "logits_index": {0: "keep"},
        **{f"past_{n}": cache_axes for n in names},
    }
    assert list(inputs)[:4] == list(CONTROL_INPUTS)  # the names the decoder fills
    outputs = {"logits": {0: "batch", 1: "keep"}, **{f"present_{n}": cache_axes for n in names}}
    example = (positions, seqlens_k, total, logits_index, *past)
    return TransformerDecodeGraph(model), example, inputs, outputs
