"""Start a FlashDecoder as the exact inverse of a linear teacher (the demo PCA codec), so training begins
at the linear baseline's quality and only has to learn what a linear decoder cannot do.

Built by hand, parameter for parameter (no new layers):
- embed copies the C latent channels into dims [0, C);
- every block starts as the identity (zero attention output and MLP down projections);
- time_up copies the latent into dims [C*j, C*(j+1)) of sub-frame j, and its bias puts a large constant c0
  in dim 4C+j (sub-frame j's "bias slot");
- the head's RMSNorm then divides every token by ~c0/sqrt(d) (the constant dominates the RMS: the same
  scale for every token) and its gains undo that; the GELU MLP passes its input through exactly, since
  GELU(x) - GELU(-x) = x; the last Linear holds sub-frame j's decoding matrix and mean.
Nothing trainable multiplies c0 except norm gains (scale-free), so Adam's steps move the output gently.
"""
from __future__ import annotations

import math

import torch

from ..model import FlashDecoder

C0 = 1000.0  # the slot constant: dominates every sub-frame token's RMS, so RMSNorm becomes a fixed scale


@torch.no_grad()
def init_from_linear_teacher(model: FlashDecoder, teacher) -> FlashDecoder:
    """teacher.sub_frame_decoder() -> (D [4, 768, C], m [4, 768]): pixels of sub-frame j = D[j] @ z + m[j]."""
    c = model.config
    D, m = (t.float().to(model.embed.weight.device) for t in teacher.sub_frame_decoder())
    C, d, T = c.in_channels, c.dim, c.time_up
    if c.patch != 1 or (C + 1) * T > d or D.shape != (T, 3 * c.pixel_patch**2, C):
        raise ValueError(f"model {c.name} (width {d}) cannot hold a {C}-channel linear decoder for {T} sub-frames")
    eye = torch.eye(C)

    model.embed.weight.zero_()
    model.embed.weight[:C] = eye
    model.embed.bias.zero_()
    for blk in [*model.blocks, *model.refine]:
        blk.attn.wo.weight.zero_()
        blk.mlp.w2.weight.zero_()

    W = model.time_up.weight.view(T, d, d)  # [sub-frame, out dim, in dim]
    W.zero_()
    bias = model.time_up.bias.view(T, d)
    bias.zero_()
    for j in range(T):
        W[j, C * j : C * (j + 1), :C] = eye
        bias[j, C * T + j] = C0

    rms = C0 / math.sqrt(d)  # RMS of a sub-frame token
    slots = slice(C * T, C * T + T)
    norm, up, _, down, out = model.head
    for n in [norm, *(n for blk in model.refine for n in (blk.attn_norm, blk.mlp_norm))]:
        n.weight.fill_(rms)  # content back at its own scale
        n.weight[slots] = 1 / math.sqrt(d)  # the slot at ~1
    up.weight[: 2 * d].zero_()
    up.weight[:d, :d] = torch.eye(d)
    up.weight[d : 2 * d, :d] = -torch.eye(d)
    up.bias.zero_()
    down.weight.zero_()
    down.weight[:, :d] = torch.eye(d)
    down.weight[:, d : 2 * d] = -torch.eye(d)  # GELU(x) - GELU(-x) = x
    down.bias.zero_()
    out.weight.zero_()
    out.bias.zero_()
    for j in range(T):
        out.weight[:, C * j : C * (j + 1)] = D[j]
        out.weight[:, C * T + j] = m[j]  # times the slot's ~1
    return model
