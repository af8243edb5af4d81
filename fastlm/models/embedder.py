"""EmbeddingTower: what `embed()` runs, a pooled (and optionally projected) encoder.

Two forms, one interface:
- a *trained tower*: its own copy of the LM's token table and encoder (same architecture,
  initialised from the LM, then trained for similarity; the LM's output layer dropped) plus a
  linear projection of [mean of top-layer states, mean of token-table rows] (B, C + E) -> (B, dim):
  the token-table mean carries the lexical signal that next-token states lose. Shipped beside
  the LM as embedder.safetensors, so similarity training can never make generation or scoring
  worse.
- the *LM itself* (checkpoints without a tower, e.g. fresh from `fastlm train`): the masked mean
  of the LM's top-layer states, no projection.

forward(input_ids (B, T), attention_mask (B, T)) -> (B, dim) float32, not normalised.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastlm.models.layers import mean_pool


class EmbeddingTower(nn.Module):
    def __init__(self, encoder: nn.Module, proj: nn.Linear | None = None):
        """encoder: a model speaking the protocol of fastlm/models/architecture.py (hidden_states:
        top-layer states (B, T, C)). proj: C + E -> dim (state and token-table means), or
        None for the plain mean of the states."""
        super().__init__()
        self.encoder = encoder
        self.proj = proj
        if proj is not None and proj.in_features != pooled_width(encoder):
            raise ValueError(
                f"proj must take {pooled_width(encoder)} features, not {proj.in_features}"
            )

    @property
    def config(self):
        return self.encoder.config

    @property
    def dim(self) -> int:
        return self.proj.out_features if self.proj is not None else self.config.embed_dim

    def states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> top-layer states (B, T, C)."""
        return self.encoder.hidden_states(input_ids)[0]

    def pool(
        self, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Top-layer states (B, T, C) of input_ids (B, T) -> (B, dim): the rest of the tower,
        for backends that compute the states their own way (kernels)."""
        pooled = mean_pool(states, attention_mask)  # (B, C)
        if self.proj is None:
            return pooled
        tokens = mean_pool(self.encoder.embedding(input_ids), attention_mask)  # (B, C)
        return self.proj(torch.cat([pooled, tokens], dim=1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.states(input_ids), input_ids, attention_mask)

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors embedder.safetensors holds (a trained tower only)."""
        if self.proj is None:
            raise ValueError("a tower that is the LM itself has no weights of its own")
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def pooled_width(encoder: nn.Module) -> int:
    """Features the projection takes: top-layer state width + token-table width."""
    return encoder.config.embed_dim + encoder.embedding.embedding_dim


def _headless(lm: nn.Module) -> nn.Module:
    lm.fc = None  # the vocabulary projection belongs to the LM, not the tower
    return lm


def new_tower(
    lm_like: nn.Module, dim: int | None = None, scales: tuple[float, float] = (1.0, 0.0)
) -> EmbeddingTower:
    """A trainable tower initialised from a trained LM (a deep copy: the LM is untouched). The
    projection starts as [s_states * I, s_tokens * I]: with the default (1, 0) the tower starts
    as the LM's mean pooling; `scales` that equalise the two means' norms start it as their mix
    (the token-table mean is ~50x smaller than the post-norm states, so [I, 0] would leave the
    lexical branch all but unused)."""
    enc = _headless(copy.deepcopy(lm_like))
    width, emb = enc.config.embed_dim, enc.embedding.embedding_dim
    proj = nn.Linear(pooled_width(enc), dim or width)
    with torch.no_grad():
        proj.weight.zero_()
        proj.weight[:, :width].copy_(scales[0] * torch.eye(proj.out_features, width))
        proj.weight[:, width:].copy_(scales[1] * torch.eye(proj.out_features, emb))
        proj.bias.zero_()
    return EmbeddingTower(enc, proj)


def tower_from_weights(empty_lm: nn.Module, tensors: dict[str, torch.Tensor]) -> EmbeddingTower:
    """Rebuild a trained tower from embedder.safetensors tensors around a fresh LM of the right
    config. Raises ValueError when names or shapes do not match."""
    enc = _headless(empty_lm)
    if "proj.weight" not in tensors:
        raise ValueError("embedder weights have no proj.weight")
    out_dim, features = tensors["proj.weight"].shape
    if features != pooled_width(enc):
        raise ValueError(
            f"proj.weight is {tuple(tensors['proj.weight'].shape)}, the encoder needs "
            f"{pooled_width(enc)} input features"
        )
    tower = EmbeddingTower(enc, nn.Linear(features, out_dim))
    expected = set(tower.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"embedder weights do not match: missing {missing[:3]}, extra {extra[:3]}")
    try:
        tower.load_state_dict(tensors)
    except RuntimeError as e:  # shape mismatch
        raise ValueError(
            f"embedder weights do not fit the model: {str(e).splitlines()[-1]}"
        ) from None
    return tower.eval()
