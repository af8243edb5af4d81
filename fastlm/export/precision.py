"""Lower-precision copies of the fp32 graphs: fp16 (a small converter of our own) and int8.

fp16 (`to_fp16`): inputs and outputs stay float32; so do LayerNorm, Softmax, reductions, the
pooling and the LSTM cell math. What changes:
- MatMul / Gemm with a constant weight compute in fp16: Cast(activation -> fp16), fp16 weight
  (and Gemm bias), Cast(result -> fp32). These are the ops that pay on a GPU.
- Every other large float constant (embedding table, position table, LSTM weights) is *stored*
  in fp16 and cast to fp32 where it is read; ORT folds that Cast when it loads the model.
We write this with `onnx` itself rather than a generic float16 converter: those relabel every
float tensor, including the exporter's own Cast-to-float nodes, which yields graphs ORT refuses
to load ("Type (tensor(float16)) of output arg (_to_copy) ... does not match"). Here no existing
tensor changes type; new fp16 tensors get new names, so the graph stays valid by construction.
The CPU provider has no fp16 GEMM on x86: it inserts casts and computes in fp32 (no speed-up,
half the file size); CUDA runs the fp16 MatMuls on tensor cores.

int8 (`quantize_int8`): onnxruntime dynamic quantization, per-channel int8 weights with
reduce_range=True (7-bit weights: without VNNI, AVX2's u8*s8 pairwise add saturates, which cost
~10x more error here with the default settings). The LSTM graphs go through quant_pre_process
first (shape inference the quantizer needs for the LSTM op).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

FP16_STORE_MIN = 4096  # float constants at least this large are stored as fp16 (biases, LN stay)
MATMUL_OPS = ("MatMul", "Gemm")


# ---------------------------------------------------------------------- fp16
def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights, fp32 inputs/outputs/normalisation (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # work on a copy
    graph = model.graph
    for i, node in enumerate(graph.node):  # new tensor names derive from node names
        node.name = node.name or f"{node.op_type}_{i}"
    inits = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    users = _users(graph)
    nodes: list[onnx.NodeProto] = []
    new_inits: dict[str, onnx.TensorProto] = {}  # fp32 name -> its fp16 copy
    for node in graph.node:
        if node.op_type in MATMUL_OPS and _fp16_matmul_ok(node, inits, users):
            nodes.extend(_matmul_in_fp16(node, inits, new_inits))
        else:
            nodes.append(node)
    casts = []
    for name, init in inits.items():  # storage-only fp16 for the remaining large constants
        if name in new_inits or int(np.prod(init.dims)) < FP16_STORE_MIN:
            continue
        new_inits[name] = _half(init, f"{name}__fp16")
        casts.append(
            helper.make_node(
                "Cast",
                [new_inits[name].name],
                [name],
                to=TensorProto.FLOAT,
                name=f"{name}__to_fp32",
            )
        )
    dropped = set(new_inits)
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + [new_inits[k] for k in sorted(new_inits)])
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first: they only read initializers
    onnx.checker.check_model(model)
    return model


def _users(graph) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    users: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    return users


def _fp16_matmul_ok(node, inits, users) -> bool:
    """A MatMul/Gemm whose weight (input 1) is a float constant used only as such a weight."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return False
    if node.op_type == "MatMul" and node.input[0] in inits:
        return False
    return all(u.op_type in MATMUL_OPS and k == 1 for u, k in users[node.input[1]])


def _matmul_in_fp16(node, inits, new_inits) -> list[onnx.NodeProto]:
    """Cast(x -> fp16) -> MatMul/Gemm with fp16 constants -> Cast(-> fp32) under the old name."""
    x16, y16 = f"{node.name}__x_fp16", f"{node.output[0]}__fp16"
    weight = node.input[1]
    if weight not in new_inits:
        new_inits[weight] = _half(inits[weight], f"{weight}__fp16")
    inputs = [x16, new_inits[weight].name]
    pre = [
        helper.make_node(
            "Cast", [node.input[0]], [x16], to=TensorProto.FLOAT16, name=f"{node.name}__cast_in"
        )
    ]
    for name in node.input[2:]:  # a Gemm bias: small, kept fp32 and cast (folded at load)
        inputs.append(f"{node.name}__c_fp16")
        pre.append(
            helper.make_node(
                "Cast", [name], [inputs[-1]], to=TensorProto.FLOAT16, name=f"{node.name}__cast_c"
            )
        )
    mm = helper.make_node(node.op_type, inputs, [y16], name=node.name)
    mm.attribute.extend(node.attribute)
    post = helper.make_node(
        "Cast", [y16], [node.output[0]], to=TensorProto.FLOAT, name=f"{node.name}__cast_out"
    )
    return [*pre, mm, post]


def _half(init: onnx.TensorProto, name: str) -> onnx.TensorProto:
    arr = numpy_helper.to_array(init).astype(np.float32)
    if np.abs(arr).max(initial=0.0) > 65504:
        raise ValueError(f"weight {init.name} has values beyond the fp16 range (65504)")
    return numpy_helper.from_array(arr.astype(np.float16), name)


# ---------------------------------------------------------------------- int8
def fold_weight_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every Transpose of an initializer replaced by the transposed initializer.
    The fp32 decode graph keeps its linears' weights as the checkpoint stores them, transposed
    in the graph (so a pack can read them from the checkpoint); the fp16 and int8 conversions
    recognise a MatMul's weight only as an initializer, so they fold those first."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        array = numpy_helper.to_array(inits[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        graph.initializer.append(numpy_helper.from_array(array.transpose(perm), node.output[0]))
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    return model


def quantize_int8(src: Path, dst: Path, extra_ops: tuple[str, ...] = ()) -> None:
    """Dynamic int8 quantization of the ONNX file `src` into `dst` (see the module docstring).

    Every MatMul/Gemm with a constant weight (and the architecture's `extra_ops`, e.g. LSTM) is
    quantized, the LM's output
    projection included (the certificate stays far inside its bounds, docs/onnx.md), except the
    embedding tower's final projection: its input concatenates two means ~50x apart in scale,
    and one per-tensor activation scale would flatten the smaller (lexical) half.
    """

    ops = ["MatMul", "Gemm", *extra_ops]
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        source = Path(tmp) / "folded.onnx"
        onnx.save(fold_weight_transposes(onnx.load(str(src))), str(source))
        if extra_ops:  # ORT quantizes recurrent ops only after its shape inference pass
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(source), str(pre), skip_optimization=False)
            source = pre
        quantize_dynamic(
            str(source),
            str(dst),
            op_types_to_quantize=ops,
            nodes_to_exclude=_embedding_projection(source),
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )


def _embedding_projection(path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes that compute the graph output "embedding": the node that
    writes it, or the matmul under its bias Add (quant_pre_process splits Gemm into the two)."""

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: n for n in graph.node for out in n.output}
    last = producer.get("embedding")
    if last is None:
        return []
    candidates = [last] + [
        producer[i] for i in last.input if i in producer and last.op_type == "Add"
    ]
    names = [n.name for n in candidates if n.op_type in ("MatMul", "Gemm") and n.name]
    # quantize_dynamic first splits a Gemm into "<name>_MatMul" + "<name>_Add": exclude both
    return names + [f"{n}_MatMul" for n in names]
