"""The ONNX Runtime side of fastlm, with no torch and no onnx: what reads an export directory or
a shipped ONNX pack and runs it.

    fastlm/ort/format.py    the export directory: manifest, certificates, graph stamps
    fastlm/ort/packs.py     a shipped model's ONNX pack (graphs whose weights are the checkpoint's)
    fastlm/ort/sessions.py  InferenceSession creation and runs with typed memory errors
    fastlm/ort/decoder.py   incremental decoding through the decode graph (IO binding on a CPU)

The backend built on them is `fastlm.runtime.OrtBackend`; the torch side that writes these
directories is fastlm/export/.
"""
