"""ONNX export: fp32 / fp16 / int8 graphs, a parity certificate, one atomic directory."""
