"""Start a FlashDecoder as the exact inverse of a linear teacher (the demo PCA codec), so training begins
at the linear baseline's quality and only has to learn what a linear decoder cannot do.

Built by hand, parameter for parameter (no new layers):
- embed copies the C latent channels into dims [0, C) and puts a large constant c0 in the last dim;
- every block starts as the identity (zero attention output and MLP down projections), with its norm
  gains set so its random q/k/v/MLP weights see the content at unit scale, not swamped by c0;
- time_up copies the latent into dims [C*j, C*(j+1)) of sub-frame j and c0 into dim 4C+j (its bias slot);
- the head's RMSNorm divides by ~c0 (the constant dominates the RMS, so the scale is the same for every
  token), its GELU runs in its linear range (inputs shifted by +beta, shifted back after), and the last
  Linear holds sub-frame j's decoding matrix and mean.
"""
from __future__ import annotations

import math

import torch

from .model import FlashDecoder

C0 = 1000.0  # the constant channel: dominates every token's RMS so RMSNorm becomes a fixed scale
BETA = 30.0  # GELU(x + BETA) - BETA == x to float32 precision for |x| << BETA


@torch.no_grad()
def init_from_linear_teacher(model: FlashDecoder, teacher) -> FlashDecoder:
    """teacher.sub_frame_decoder() -> (D [4, 768, C], m [4, 768]): pixels of sub-frame j = D[j] @ z + m[j]."""
    c = model.config
    D, m = (t.float().to(model.embed.weight.device) for t in teacher.sub_frame_decoder())
    C, d, K = c.in_channels, c.dim, c.dim - 1
    if c.patch != 1 or 4 * C + 4 >= K or D.shape != (c.time_up, 3 * c.pixel_patch**2, C):
        raise ValueError(f"model {c.name} (width {d}) cannot hold a {C}-channel linear decoder for 4 sub-frames")
    rms = C0 / math.sqrt(d)  # RMS of a backbone token: the constant dominates
    eye = torch.eye(C)

    model.embed.weight.zero_()
    model.embed.weight[:C] = eye
    model.embed.bias.zero_()
    model.embed.bias[K] = C0

    for blk in [*model.blocks, *model.refine]:
        blk.attn.wo.weight.zero_()
        blk.mlp.w2.weight.zero_()
    for blk in model.blocks:  # content at unit scale after the norm, the constant at ~1
        for norm in (blk.attn_norm, blk.mlp_norm):
            norm.weight.fill_(rms)
            norm.weight[K] = 1 / math.sqrt(d)

    W = model.time_up.weight.view(c.time_up, d, d)  # [sub-frame, out dim, in dim]
    W.zero_()
    model.time_up.bias.zero_()
    for j in range(c.time_up):
        W[j, C * j : C * (j + 1), :C] = eye
        W[j, 4 * C + j, K] = 1.0
    slots = slice(4 * C, 4 * C + c.time_up)  # a sub-frame token: its latent copy, and c0 in its slot
    norm, up, _, down, out = model.head
    for n in [norm, *(n for blk in model.refine for n in (blk.attn_norm, blk.mlp_norm))]:
        n.weight.fill_(rms)  # content back at its own scale
        n.weight[slots] = 1 / math.sqrt(d)  # the slot at ~1
    up.weight[:d].zero_()
    up.weight[:d, :d] = torch.eye(d)
    up.bias.zero_()
    up.bias[:d] = BETA
    down.weight.zero_()
    down.weight[:, :d] = torch.eye(d)
    down.bias.fill_(-BETA)
    out.weight.zero_()
    out.bias.zero_()
    for j in range(c.time_up):
        out.weight[:, C * j : C * (j + 1)] = D[j]
        out.weight[:, 4 * C + j] = m[j]  # times the slot's ~1
    return model
