"""Export a model's three fp32 ONNX graphs: embed.onnx, lm.onnx and decode.onnx.

Graphs (batch and sequence axes dynamic; B = batch, T = tokens, V = vocab):
- embed.onnx   input_ids, attention_mask (B, T) int64 -> embedding (B, D) float32: the
               checkpoint's embedding tower (fastlm/models/embedder.py: masked mean of its
               encoder's top-layer states, projected), not normalised.
- lm.onnx      input_ids (B, T) int64 -> logits (B, T, V) float32, every position.
- decode.onnx  input_ids (B, T), *state -> logits, *new state: the
               architecture's decode graph (`Architecture.decode_graph`: the LSTM's h, c; the
               Transformer's per-layer KV caches, written in place by ONNX Runtime's fused
               GroupQueryAttention, with the positions whose logits it returns (B, K, V) as an
               input, fastlm/models/transformer_graphs.py; one graph serves prefill chunks,
               single steps and the verification of drafted tokens). All rows of a decode
               batch share the same length (batch-1 decoding is the common case).

Why the TorchScript exporter (dynamo=False): here it exports the three graphs in ~3 s with
correct dynamic axes at every shape we check (1, 3, 300 tokens; batch 1 and 7), while the dynamo
exporter took ~30 s per graph and produced an embed graph ORT refused (a duplicated value name),
and is known to record traced sizes in output shapes. Its DeprecationWarning is silenced here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fastlm.models import architecture_of
from fastlm.models.embedder import EmbeddingTower
from fastlm.models.layers import NextTokenLogits
from fastlm.ort.format import DECODE_FILE, EMBED_FILE, LM_FILE

OPSET = 17  # first opset with LayerNormalization; ORT 1.18+ runs it on CPU and CUDA


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: dict,
    outputs: dict,
    opsets=None,
    fold: bool = True,
) -> None:
    """Trace `module` on `args`; `inputs`/`outputs` map names to their dynamic axes; `opsets`
    the custom op domains the graph uses ({domain: version}); fold=False keeps constant
    subgraphs (ONNX Runtime folds them when it loads the graph)."""
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
            custom_opsets=opsets,
            do_constant_folding=fold,
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
            embedder,
            (ids, mask),
            out_dir / EMBED_FILE,
            {"input_ids": BT, "attention_mask": BT},
            {"embedding": {0: "batch"}},
        )
        _export(
            NextTokenLogits(model), (ids,), out_dir / LM_FILE, {"input_ids": BT}, {"logits": BT}
        )
        _export_decode(model, ids, out_dir / DECODE_FILE)
    return [EMBED_FILE, LM_FILE, DECODE_FILE]


def _export_decode(model: nn.Module, ids: torch.Tensor, path: Path) -> None:
    graph, state, state_in, state_out = architecture_of(model).decode_graph(model, ids.shape[0])
    _export(
        graph,
        (ids, *state),
        path,
        {"input_ids": {0: "batch", 1: "seq"}, **state_in},
        {"logits": {0: "batch"}, **state_out},
        getattr(graph, "onnx_opsets", None),  # e.g. ONNX Runtime's fused attention op
        # unfolded, a linear on (B, T, C) stores its weight as the checkpoint has it (a shipped
        # pack then reads it from the checkpoint) and transposes it in the graph, which ONNX
        # Runtime folds at load; folded here, the transposed copy was stored: +6 MB per pack
        fold=getattr(graph, "onnx_fold", True),
    )
