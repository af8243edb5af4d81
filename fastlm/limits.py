"""Bounds on what a model config may describe, shared by the configs (fastlm/models/) and the
torch-free readers of export manifests (fastlm/ort/format.py)."""

# Bounds checked before anything is allocated: a config.json from an untrusted or damaged
# checkpoint must not make us build a model of gigabytes. Generous for this project (the
# shipped models use 2,000 / 256 / 2-3 layers); token streams are uint16, hence the vocab cap.
MAX_VOCAB = 65_535
MAX_WIDTH = 8_192  # embedding_dim, hidden_dim, d_model
MAX_FEEDFORWARD = 32_768
MAX_LAYERS = 64
MAX_HEADS = 256
MAX_POSITIONS = 65_536  # rows of the Transformer's fixed position table
MAX_PARAMETERS = 500_000_000  # ~2 GB of float32 weights
