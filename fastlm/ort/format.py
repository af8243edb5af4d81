"""The export directory format ("fastlm-onnx/2"), with no torch: written by
fastlm/export/pipeline.py, read by the torch-free runtime (fastlm/runtime.py).

    embed.onnx    input_ids, attention_mask (B, T) int64 -> embedding (B, D) float32
    lm.onnx       input_ids (B, T) int64 -> logits (B, T, V) float32
    decode.onnx   input_ids (B, T) int64, [controls], *state -> logits (B, V) (or (B, K, V),
                  the positions of logits_index), *new state:
                  the state inputs are whatever the architecture carries, zero at the start,
                  and the outputs after the logits are fed back to them in order: the LSTM's
                  h, c (L, B, hidden); the Transformer's per-layer KV caches (B, heads, S,
                  head_dim), S chosen by the decoder, written in place when its outputs are
                  bound to its inputs' buffers. The controls (CONTROL_INPUTS, the Transformer's)
                  are filled from the decoder's length: position_ids (B, T) int64, seqlens_k
                  (B,) int32 (position of the last token), total_sequence_length () int32,
                  and optionally logits_index (K,) int64, the positions among the T whose
                  logits are returned (an older in-place export has none: logits (B, V))
    tokenizer.json, config.json, parity.json (the certificate), README.md (the model card)
    lexical.safetensors  optional: the embedding's lexical branch (fastlm/char_ngrams.py), used
                  only when the manifest lists it
    manifest.json format, dtype, model facts (MODEL_FACTS), graph inputs/outputs, source
                  checkpoint, versions, and the sha256 of every file above but README.md

Digests only prove the files are the ones the manifest lists, and anyone can re-hash a manifest
after an edit. So the reader also bounds the model facts (the checkpoint config's bounds), checks
config.json against them, and checks every graph (`check_graph`): its stamp (metadata_props
written by the exporter: role, model facts, source weights) and its inputs/outputs (names, element
types, static dims) against the facts. A graph of another model, or facts edited to let a text
run past the graphs' position table, are refused with ExportDirError.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from fastlm.io import sha256_file
from fastlm.limits import MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH
from fastlm.validation import check_int, check_manifest_files

# /3: every graph carries the exporter's stamp (a /2 directory has none: export it again). The
# Transformer's decode graph is read in either layout: per-layer caches written in place (this
# exporter's) or the stacked, growing past of earlier exports; the decoder reads which from it.
FORMAT = "fastlm-onnx/3"
# The exporter's graph layout, recorded in a manifest's versions: 2 = the Transformer's decode
# graph picks the positions it returns logits for (logits_index) and packs q, k, v into its
# fused attention. An older export still runs; a cached one is exported again (onnx backend).
GRAPHS_REVISION = 2
DTYPES = ("fp32", "fp16", "int8")
EMBED_FILE, LM_FILE, DECODE_FILE = "embed.onnx", "lm.onnx", "decode.onnx"
GRAPHS = {"embed": EMBED_FILE, "lm": LM_FILE, "decode": DECODE_FILE}
# metadata_props keys of the stamp: which graph it is, the model facts, the source weights
STAMP_GRAPH, STAMP_MODEL, STAMP_WEIGHTS = "fastlm.graph", "fastlm.model", "fastlm.weights_sha256"
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
MANIFEST_FILE, PARITY_FILE = "manifest.json", "parity.json"
# decode.onnx inputs a decoder fills from its own length (not fed back from the outputs)
CONTROL_INPUTS = {
    "position_ids": ("tensor(int64)", ["batch", "seq"]),
    "seqlens_k": ("tensor(int32)", ["batch"]),
    "total_sequence_length": ("tensor(int32)", []),
    "logits_index": ("tensor(int64)", ["keep"]),
}
OPTIONAL_CONTROLS = ("logits_index",)
# What a reader may know without torch: sizes, the embedding window, whether full-sequence
# graphs materialise attention scores, and the decode state's sizes.
MODEL_FACTS = (
    "architecture",
    "vocab_size",
    "embed_dim",
    "max_len",
    "num_layers",
    "embed_window",
    "attention_scores",
    "state",
)
# [lo, hi] of each int fact: the checkpoint config's bounds (fastlm/models/config.py)
FACT_BOUNDS = {
    "vocab_size": MAX_VOCAB,
    "embed_dim": MAX_WIDTH,
    "num_layers": MAX_LAYERS,
    "embed_window": MAX_POSITIONS,
}
_ARCH_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
REQUIRED_FILES = (EMBED_FILE, LM_FILE, DECODE_FILE, TOKENIZER_FILE, CONFIG_FILE, PARITY_FILE)


class ExportDirError(ValueError):
    """An export directory is missing a file, fails its sha256 check, or cannot be parsed."""


def verify_export_dir(path: str | os.PathLike) -> dict:
    """Check every file of an export directory against manifest.json; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise ExportDirError(f"export directory not found: {path}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportDirError(f"{path} has no {MANIFEST_FILE}: not a fastlm export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: {err!r}") from None
    # schema first (plain names, hex digests), so no listed path is ever opened outside `path`
    files = check_manifest_files(manifest, str(path / MANIFEST_FILE), ExportDirError, MANIFEST_FILE)
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: 'model' must be an object")
    if manifest.get("format") != FORMAT:
        raise ExportDirError(
            f"{path} has format {manifest.get('format')!r}, expected {FORMAT}: export it again "
            "with this fastlm"
        )
    for name in sorted(set(REQUIRED_FILES) | set(files)):
        f = path / name
        if not f.is_file():
            raise ExportDirError(f"export file missing: {f}")
        if name not in files:
            raise ExportDirError(f"{f} is not listed in {MANIFEST_FILE}")
        if sha256_file(f) != files[name]:
            raise ExportDirError(f"sha256 mismatch for {f}: the file is corrupt or was edited")
    where = path / MANIFEST_FILE
    if manifest.get("dtype") not in DTYPES:
        raise ExportDirError(f"{where}: dtype {manifest.get('dtype')!r} is not one of {DTYPES}")
    source = manifest.get("source")
    if not isinstance(source, dict) or not _is_sha256(source.get("weights_sha256")):
        raise ExportDirError(f"{where}: source.weights_sha256 must be 64 hex digits")
    check_model_facts(model, where)
    _check_config(path / CONFIG_FILE, model)
    return manifest


def check_model_facts(model: dict, where: Path) -> None:
    """Every fact present, of its type and within the checkpoint config's bounds: an edited
    max_len of 1e9 must not let a text run past the graphs' position table."""
    missing = [k for k in MODEL_FACTS if k not in model]
    if missing:
        raise ExportDirError(f"{where}: 'model' lacks {missing}")
    arch = model["architecture"]
    if not isinstance(arch, str) or not _ARCH_NAME.fullmatch(arch):
        raise ExportDirError(f"{where}: architecture must be a lower-case name, got {arch!r}")
    if not isinstance(model["attention_scores"], bool):
        raise ExportDirError(f"{where}: attention_scores must be a bool")
    ints = {k: (model[k], hi) for k, hi in FACT_BOUNDS.items()}
    if model["max_len"] is not None:  # None: a recurrent model, no position table
        ints["max_len"] = (model["max_len"], MAX_POSITIONS)
    state = model["state"]
    if not isinstance(state, dict) or not 1 <= len(state) <= 8:
        raise ExportDirError(f"{where}: state must be an object of 1 to 8 sizes")
    ints.update({f"state[{k!r}]": (v, MAX_WIDTH) for k, v in state.items()})
    for name, (value, hi) in ints.items():
        try:
            check_int(value, name, min=1, max=hi)
        except (TypeError, ValueError) as err:
            raise ExportDirError(f"{where}: model {err}") from None
    if model["max_len"] is not None and model["embed_window"] > model["max_len"]:
        raise ExportDirError(f"{where}: embed_window exceeds max_len")


def _check_config(f: Path, model: dict) -> None:
    """config.json must describe the model the manifest's facts describe."""
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportDirError(f"{f} is corrupt: {err!r}") from None
    if not isinstance(config, dict):
        raise ExportDirError(f"{f} must hold a JSON object")
    for key in ("architecture", "vocab_size", "num_layers", "max_len"):
        if config.get(key) != model[key]:
            raise ExportDirError(
                f"{f}: {key} is {config.get(key)!r} but {MANIFEST_FILE} says {model[key]!r}: "
                "the files are not of one export"
            )


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


# ------------------------------------------------------------------------------ graphs
def graph_stamp(role: str, facts: dict, weights_sha256: str) -> dict[str, str]:
    """The metadata_props the exporter writes into graph `role` ("embed" | "lm" | "decode")."""
    return {
        STAMP_GRAPH: role,
        STAMP_MODEL: json.dumps(facts, sort_keys=True),
        STAMP_WEIGHTS: weights_sha256,
    }


def check_graph(session, path: Path, role: str, manifest: dict) -> None:
    """Refuse (ExportDirError naming `path`) an ONNX Runtime session of graph `role` that is not
    this export's: a stamp that differs from the manifest's facts and source weights, or inputs
    and outputs whose names, element types or static dims do not fit the facts."""
    _check_stamp(session.get_modelmeta().custom_metadata_map, path, role, manifest)
    facts = manifest["model"]
    ins, outs = list(session.get_inputs()), list(session.get_outputs())
    want_in, want_out = _expected_io(role, facts)
    if role == "decode":  # the state: the outputs after the logits feed the inputs after the ids
        controls = [i for i in ins[1:] if i.name in CONTROL_INPUTS]
        _check_controls(controls, path)
        _check_state([i for i in ins[1:] if i.name not in CONTROL_INPUTS], outs[1:], path, facts)
        ins, outs = ins[:1], outs[:1]
        if any(c.name == "logits_index" for c in controls):
            want_out = [("logits", "tensor(float)", ["batch", "keep", facts["vocab_size"]])]
    for kind, got, want in (("input", ins, want_in), ("output", outs, want_out)):
        if [v.name for v in got] != [name for name, _, _ in want]:
            raise ExportDirError(
                f"{path}: {kind}s {[v.name for v in got]}, expected {[n for n, _, _ in want]}"
            )
        for value, (name, elem, dims) in zip(got, want):
            if value.type != elem or not _dims_fit(value.shape, dims):
                raise ExportDirError(
                    f"{path}: {kind} {name!r} is {value.type}{_dims_text(value.shape)}, "
                    f"expected {elem}{_dims_text(dims)} from {MANIFEST_FILE}"
                )


def _check_stamp(meta: dict, path: Path, role: str, manifest: dict) -> None:
    if STAMP_MODEL not in meta:
        raise ExportDirError(
            f"{path} carries no fastlm stamp: it was not written by this fastlm's exporter "
            "(export it again)"
        )
    try:
        stamped = json.loads(meta[STAMP_MODEL])
    except json.JSONDecodeError:
        stamped = None
    facts = manifest["model"]
    if not isinstance(stamped, dict):
        raise ExportDirError(f"{path}: its stamp {STAMP_MODEL} is not a JSON object")
    diff = [
        f"{k} {stamped.get(k)!r} (manifest: {facts[k]!r})"
        for k in facts
        if stamped.get(k) != facts[k]
    ]
    if meta.get(STAMP_GRAPH) != role:
        diff.insert(0, f"graph {meta.get(STAMP_GRAPH)!r} (expected {role!r})")
    if meta.get(STAMP_WEIGHTS) != manifest["source"]["weights_sha256"]:
        diff.append("other source weights")
    if diff:
        raise ExportDirError(
            f"{path} is not this export's {role} graph: it was exported for {'; '.join(diff)}"
        )


def _expected_io(role: str, facts: dict) -> tuple[list, list]:
    """([(name, ORT element type, dims)] inputs, [...] outputs) of graph `role`; a dim is an int
    (static) or a name (dynamic: any symbolic dim). The decode state is checked apart."""
    ids = ("input_ids", "tensor(int64)", ["batch", "seq"])
    vocab, width = facts["vocab_size"], facts["embed_dim"]
    if role == "embed":
        mask = ("attention_mask", "tensor(int64)", ["batch", "seq"])
        return [ids, mask], [("embedding", "tensor(float)", ["batch", width])]
    if role == "lm":
        return [ids], [("logits", "tensor(float)", ["batch", "seq", vocab])]
    assert role == "decode", role
    return [ids], [("logits", "tensor(float)", ["batch", vocab])]


def _check_controls(controls: list, path: Path) -> None:
    """None, or every control input (OPTIONAL_CONTROLS may be missing) with its type and
    dims (CONTROL_INPUTS)."""
    names = {c.name for c in controls}
    required = set(CONTROL_INPUTS) - set(OPTIONAL_CONTROLS)
    if controls and not required <= names:
        raise ExportDirError(
            f"{path}: control inputs {[c.name for c in controls]}, expected all of "
            f"{list(CONTROL_INPUTS)} ({', '.join(OPTIONAL_CONTROLS)} optional) or none"
        )
    for c in controls:
        elem, dims = CONTROL_INPUTS[c.name]
        if c.type != elem or not _dims_fit(c.shape, dims):
            raise ExportDirError(
                f"{path}: input {c.name!r} is {c.type}{_dims_text(c.shape)}, expected "
                f"{elem}{_dims_text(dims)}"
            )


def _check_state(ins: list, outs: list, path: Path, facts: dict) -> None:
    """The state inputs: all stacked over layers, (L, batch, *sizes) with L = num_layers (the
    LSTM's h, c: (L, B, hidden)), or one or more per layer, (batch, *sizes) with the sizes'
    axes static and one more symbolic (the Transformer's caches: (B, heads, S, head)); the
    static sizes the manifest's `state` facts in order. The state outputs, in the same order,
    of the same type and static dims."""
    sizes = list(facts["state"].values())
    layers = facts["num_layers"]
    if not ins or len(ins) != len(outs):
        raise ExportDirError(
            f"{path}: {len(ins)} state inputs and {len(outs)} state outputs; expected the same "
            "number, at least one"
        )
    per_layer = 0
    for i in ins:
        dims, shape = [d for d in _static(i.shape) if d is not None], list(i.shape)
        stacked = dims == [layers, *sizes] and len(shape) > 1 and not isinstance(shape[1], int)
        one = dims == sizes and bool(shape) and not isinstance(shape[0], int)
        per_layer += one
        if i.type not in ("tensor(float)", "tensor(float16)") or not (stacked or one):
            raise ExportDirError(
                f"{path}: state input {i.name!r} is {i.type}{_dims_text(i.shape)}, expected float "
                f"with static dims {[layers, *sizes]} (num_layers, then state "
                f"{facts['state']}), or {sizes} per layer"
            )
    if per_layer % layers:
        raise ExportDirError(f"{path}: {per_layer} per-layer state inputs for {layers} layers")
    for i, o in zip(ins, outs):
        if o.type != i.type or _static(o.shape) != _static(i.shape):
            raise ExportDirError(
                f"{path}: state output {o.name!r} is {o.type}{_dims_text(o.shape)}, but it "
                f"feeds input {i.name!r} ({i.type}{_dims_text(i.shape)})"
            )


def _static(shape) -> list[int | None]:
    """A graph value's dims as ORT reports them: ints static, None for a symbolic dim."""
    return [d if isinstance(d, int) else None for d in shape]


def _dims_fit(shape, dims: list) -> bool:
    """`shape` has `dims`' rank, their ints where they are static, symbols where they are named."""
    want = [d if isinstance(d, int) else None for d in dims]
    return len(shape) == len(dims) and _static(shape) == want


def _dims_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
