"""Training and evaluating the similarity embeddings that `LanguageModel.embed` returns.

- corpus: sentences and passages cut from plain-text books (the distillation texts).
- teacher: an optional sentence-transformers teacher and a resumable on-disk cache of its vectors.
- trainer: fine-tunes the embedding tower (a copy of the LM's weights) for similarity.
- metrics: STS Spearman, BEIR-style nDCG@10 / Recall@100.
"""
