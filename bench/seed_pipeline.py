"""The seed pipeline: the baseline the end-to-end and long-document suites measure `embed`
against (bench/test_embed_e2e.py, bench/test_long_docs.py).

The texts in their given order, batches of 32 padded to their longest, the eager forward plus
masked mean under torch.no_grad, one host copy at the end.
"""

from __future__ import annotations


def seed_pipeline(embedder, tokenizer, texts: list[str], device: str, batch_size: int = 32):
    """(n, D) float32 unnormalised embeddings, the seed's way: caller order, batches of 32
    padded to their longest, no_grad, eager. `embedder` is the checkpoint's embedding tower
    (models/embedder.py), so both pipelines compute the same function."""
    import torch

    pooled = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer.encode_batch(texts[start : start + batch_size])
            ids = torch.from_numpy(batch.input_ids).to(device)
            mask = torch.from_numpy(batch.attention_mask).to(device)
            pooled.append(embedder(ids, mask))
    return torch.cat(pooled).cpu().numpy()
