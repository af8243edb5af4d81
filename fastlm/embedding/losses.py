"""Losses for similarity training. All take L2-normalisable (B, D) float tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosent_loss(u: torch.Tensor, v: torch.Tensor, gold: torch.Tensor, scale: float = 20.0):
    """CoSENT (Su 2022): every pair whose gold score is higher must get the higher cosine.

    u, v (B, D) embeddings of the two sides; gold (B,) similarity scores (any scale)."""
    cos = F.cosine_similarity(u, v, dim=1) * scale  # (B,)
    diff = (
        cos[None, :] - cos[:, None]
    )  # diff[i, j] = cos_j - cos_i, penalised where gold_i > gold_j
    diff = diff - (gold[:, None] <= gold[None, :]).float() * 1e12
    zero = torch.zeros(1, dtype=diff.dtype, device=diff.device)
    return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)


def teacher_infonce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05):
    """In-batch contrastive distillation: each student row must pick its own text's teacher row
    among the batch's. student (B, Dt) already projected to the teacher's width; teacher (B, Dt)."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    logits = s @ t.T / temperature  # (B, B)
    labels = torch.arange(len(s), device=s.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor):
    """Match the in-batch cosine matrix of the student (B, D) to the teacher's (B, Dt): a
    width-free target that shapes exactly what ranking uses."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    return F.mse_loss(s @ s.T, t @ t.T)
