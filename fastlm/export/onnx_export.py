"""Export a model's three fp32 ONNX graphs: embed.onnx, lm.onnx and decode.onnx.

Graphs (batch and sequence axes dynamic; B = batch, T = tokens, V = vocab):
- embed.onnx   input_ids, attention_mask (B, T) int64 -> embedding (B, D) float32: the
               checkpoint's embedding tower (fastlm/models/embedder.py: masked mean of its
               encoder's top-layer states, projected), not normalised.
- lm.onnx      input_ids (B, T) int64 -> logits (B, T, V) float32, every position.
- decode.onnx  continue sequences by T >= 1 tokens and return the last position's logits (B, V):
    LSTM:        input_ids (B, T), h, c (L, B, H) -> logits, h_out, c_out.
    Transformer: input_ids (B, T), past_key, past_value (L, B, NH, P, Dh) -> logits,
                 present_key, present_value (L, B, NH, P + T, Dh). A growing cache: the new
                 tokens sit at positions P..P+T-1, where P (the past length, 0 for a prefill) is
                 read from the cache's shape, so one graph serves prefill and single steps.
  All rows of a decode batch share the same length (batch-1 decoding is the common case).

Why the TorchScript exporter (dynamo=False): here it exports the three graphs in ~3 s with
correct dynamic axes at every shape we check (1, 3, 300 tokens; batch 1 and 7), while the dynamo
exporter took ~30 s per graph and produced an embed graph ORT refused (a duplicated value name),
and is known to record traced sizes in output shapes. Its DeprecationWarning is silenced here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM
from fastlm.models.embedder import EmbeddingTower
from fastlm.runtime import DECODE_FILE, EMBED_FILE, LM_FILE

OPSET = 17  # first opset with LayerNormalization; ORT 1.18+ runs it on CPU and CUDA


def _top_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model.hidden_states(input_ids)
    return out[0] if isinstance(out, tuple) else out  # the LSTM also returns (h, c)


class EmbedGraph(nn.Module):
    """(input_ids, attention_mask) (B, T) -> (B, D) embedding tower output, not normalised."""

    def __init__(self, embedder: EmbeddingTower):
        super().__init__()
        self.embedder = embedder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embedder(input_ids, attention_mask)


class LMGraph(nn.Module):
    """input_ids (B, T) -> logits (B, T, V)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.fc(_top_states(self.model, input_ids))


class LSTMDecodeGraph(nn.Module):
    """(input_ids (B, T), h, c (L, B, H)) -> (last logits (B, V), h, c)."""

    def __init__(self, model: SimpleLSTM_LM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, h, c):
        out, (h, c) = self.model.hidden_states(input_ids, (h, c))  # (B, T, H)
        return self.model.fc(out[:, -1]), h, c


class TransformerDecodeGraph(nn.Module):
    """(input_ids (B, T), past_key, past_value (L, B, NH, P, Dh)) -> (last logits (B, V),
    present_key, present_value (L, B, NH, P + T, Dh)). The same math as the model's layers,
    written with an explicit additive mask so the past length P can be dynamic."""

    def __init__(self, model: SimpleTransformer_LM):
        super().__init__()
        self.model = model
        self.nhead = model.config.nhead

    def forward(self, input_ids, past_key, past_value):
        m = self.model
        P, T = past_key.shape[3], input_ids.shape[1]
        x = m.embedding(input_ids) * m.emb_scale + m.pos_table[P : P + T]  # (B, T, C)
        q_pos = torch.arange(T, device=x.device) + P  # (T,)
        k_pos = torch.arange(P + T, device=x.device)  # (P + T,)
        bias = torch.zeros(T, P + T, device=x.device).masked_fill(
            k_pos.unsqueeze(0) > q_pos.unsqueeze(1), float("-inf")
        )  # (T, P + T): a query sees keys at or before its own position
        keys, values = [], []
        for i, layer in enumerate(m.layers):
            x, k, v = self._layer(layer, x, past_key[i], past_value[i], bias)
            keys.append(k)
            values.append(v)
        return m.fc(x[:, -1]), torch.stack(keys), torch.stack(values)

    def _layer(self, layer, x, past_k, past_v, bias):
        B, T, C = x.shape
        D = C // self.nhead
        q, k, v = layer.attn.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nhead, D).transpose(1, 2) for t in (q, k, v))  # (B,NH,T,D)
        k = torch.cat([past_k, k], dim=2)  # (B, NH, P + T, D)
        v = torch.cat([past_v, v], dim=2)
        att = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(D)) + bias  # (B, NH, T, P + T)
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = layer.norm1(x + layer.attn.out(y))
        return layer.norm2(x + layer.ff2(F.relu(layer.ff1(x)))), k, v


def _export(module: nn.Module, args: tuple, path: Path, inputs: dict, outputs: dict) -> None:
    """Trace `module` on `args`; `inputs`/`outputs` map names to their dynamic axes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={**inputs, **outputs},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_graphs(
    model: nn.Module, out_dir: Path, embedder: EmbeddingTower | None = None
) -> list[str]:
    """Write the fp32 embed/lm/decode graphs of `model` (eval mode) into out_dir; return names.
    embed.onnx runs `embedder` (default: the LM's own mean pooling)."""
    model = model.eval().cpu()
    embedder = (embedder or EmbeddingTower(model)).eval().cpu()
    BT = {0: "batch", 1: "seq"}
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        _export(
            EmbedGraph(embedder),
            (ids, mask),
            out_dir / EMBED_FILE,
            {"input_ids": BT, "attention_mask": BT},
            {"embedding": {0: "batch"}},
        )
        _export(LMGraph(model), (ids,), out_dir / LM_FILE, {"input_ids": BT}, {"logits": BT})
        _export_decode(model, ids, out_dir / DECODE_FILE)
    return [EMBED_FILE, LM_FILE, DECODE_FILE]


def _export_decode(model: nn.Module, ids: torch.Tensor, path: Path) -> None:
    cfg = model.config
    BT, logits = {0: "batch", 1: "seq"}, {"logits": {0: "batch"}}
    if isinstance(model, SimpleLSTM_LM):
        h = torch.zeros(cfg.num_layers, ids.shape[0], cfg.hidden_dim)
        state = {1: "batch"}
        _export(
            LSTMDecodeGraph(model),
            (ids, h, h.clone()),
            path,
            {"input_ids": BT, "h": state, "c": state},
            {**logits, "h_out": state, "c_out": state},
        )
        return
    # Trace with a non-empty past (3 slots) so the traced graph keeps P symbolic.
    shape = (cfg.num_layers, ids.shape[0], cfg.nhead, 3, cfg.d_model // cfg.nhead)
    past = {1: "batch", 3: "past"}
    present = {1: "batch", 3: "total"}
    _export(
        TransformerDecodeGraph(model),
        (ids, torch.zeros(shape), torch.zeros(shape)),
        path,
        {"input_ids": BT, "past_key": past, "past_value": past},
        {**logits, "present_key": present, "present_value": present},
    )


def model_facts(config) -> dict:
    """What the torch-free runtime needs to know about the model (stored in manifest.json)."""
    facts = {
        "architecture": config.architecture,
        "vocab_size": config.vocab_size,
        "embed_dim": config.embed_dim,
        "max_len": config.max_len,
        "num_layers": config.num_layers,
    }
    if config.architecture == "lstm":
        facts["state"] = {"hidden_dim": config.hidden_dim}
    else:
        facts["state"] = {"nhead": config.nhead, "head_dim": config.d_model // config.nhead}
    return facts
