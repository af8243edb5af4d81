"""Plain PyTorch references for the Triton kernels: the CPU fallback and the parity-test oracle.

Every function accumulates in fp32 and casts its results back to the dtype of the matching
input, the same contract the kernels keep, so a parity test compares like with like.
"""

from __future__ import annotations

import math

import torch


def lstm_step(
    x_proj_t: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM time step; returns (h_new (B, H), c_new (B, H)).

    x_proj_t: (B, 4H)  x_t @ W_ih^T, already projected, bias NOT included
    h, c:     (B, H)   previous hidden and cell state
    w_hh:     (4H, H)  recurrent weights, gate rows in torch.nn.LSTM order i, f, g, o
    bias:     (4H,)    b_ih + b_hh

    h_new has h's dtype and c_new has c's dtype; the cell math runs in fp32.
    """
    gates = x_proj_t.float() + h.float() @ w_hh.float().T + bias.float()  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # each (B, H)
    c_new = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new.to(h.dtype), c_new.to(c.dtype)


def lstm_layer(
    x_proj: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One LSTM layer over a sequence; returns (out (B, T, H), (h_T (B, H), c_T (B, H))).

    x_proj: (B, T, 4H)  x @ W_ih^T for every step (batch first), bias NOT included
    h0, c0: (B, H)      initial state
    w_hh:   (4H, H), bias: (4H,) as in lstm_step

    The state is rounded to its dtype after every step, exactly as a step-by-step decode would.
    """
    h, c = h0, c0
    outputs = []
    for t in range(x_proj.shape[1]):
        h, c = lstm_step(x_proj[:, t], h, c, w_hh, bias)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h, c)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal softmax attention; returns out (B, NH, T, D) in q's dtype.

    q, k, v:          (B, NH, T, D)
    key_padding_mask: (B, T), True (or non-zero) = real token, False = padding; None = all real
    scale:            multiplies q @ k^T; default 1 / sqrt(D)

    Explicit matmul + causal mask + key mask + fp32 softmax. A query row that sees no real key
    (a pad position before the first real token) returns zeros rather than NaN.
    """
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, NH, T, T)
    visible = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # (T, T) query x key
    if key_padding_mask is not None:
        keys_real = key_padding_mask.ne(0)[:, None, None, :]  # (B, 1, 1, T)
        visible = visible & keys_real  # (B, 1, T, T)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    # a row with no visible key is all -inf and softmax makes it NaN: define it as zeros
    probs = probs.masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
    return (probs @ v.float()).to(q.dtype)
