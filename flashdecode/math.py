"""Rotary position embeddings and attention, as small pure functions (FLUX's math.py habit)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import FlashdecodeError

try:  # optional: `pip install flashdecode[flash]` (no wheels; builds against CUDA)
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None


def rope_angles(pos: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [..., dim/2] for integer positions `pos` [...] over a `dim`-wide slice of the head."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)
    return (pos.to(torch.float64)[..., None] * freqs).float()


def rope_3d(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor, axes=(24, 20, 20), theta: float = 10000.0):
    """Multi-axis RoPE as one embedder: the head dim split over (t, h, w); returns angles [..., sum(axes)/2]."""
    return torch.cat([rope_angles(p, d, theta) for p, d in zip((t, h, w), axes)], dim=-1)


def rope_table(angles: torch.Tensor) -> torch.Tensor:
    """Angles [..., L, D/2] -> real rotation table [..., 2, L, D]: cos and signed sin per head dim, computed
    once per grid. Real ops (no complex dtype), so the compiler can fuse the rotation into its neighbours."""
    cos, sin = angles.cos(), angles.sin()
    # Consecutive pairs (x[2i], x[2i+1]) rotate together (the checkpoints' convention): each pair's sin
    # enters with the sign it takes in (x0 + i x1) * e^{i angle}.
    signed_sin = torch.stack((-sin, sin), dim=-1).flatten(-2)
    return torch.stack((cos.repeat_interleave(2, dim=-1), signed_sin), dim=-3)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of `x` [..., L, D] by `rope` [2, L, D] from `rope_table` (broadcast over
    leading dims): x * cos + swap_pairs(x) * signed_sin, in the tables' dtype. The decoder builds its tables
    in the compute dtype (bf16 tables on the bundled decoder and sample: 57.61 dB from float32 output, against
    57.62 dB with float32 tables), so a bf16 `x` is rotated in bf16, not promoted to float32 and cast back."""
    cos, sin = rope.unbind(-3)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x0, x1) -> (x1, x0)
    return torch.addcmul(x * cos, swapped, sin).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              backend: str = "sdpa") -> torch.Tensor:
    """Grouped-query attention. q [B, H, L, D]; k, v [B, KV, S, D] with H a multiple of KV.

    `mask` is a boolean [L or 1, S] (True = attend). flash-attn takes GQA directly but no mask: with a
    mask (only the masked reference: streaming never passes one) SDPA serves. "short": `short_attention`.
    """
    if backend == "short" and mask is None:
        return short_attention(q, k, v)
    if backend == "flash" and mask is None:
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention over many short sequences (the refinement's 4 sub-frames of each token) as one
    batched product: q [n, H, L, D], k, v [n, KV, L, D] -> [n, H, L, D], softmax in float32. The same function as
    SDPA (exact in float32); SDPA launches one tiny problem per sequence instead. Measured (2-core Xeon CPU,
    torch 2.13, 1024 tokens, 24/3 heads, L 4): 102 vs 122 ms in float32, 98 vs 330 ms in bf16."""
    n, H, L, D = q.shape
    kv = k.shape[1]
    scores = torch.matmul(q.reshape(n, kv, H // kv * L, D), k.transpose(-1, -2)).mul_(D**-0.5)  # [n, KV, G*L, L]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v).view(n, H, L, D)  # query head h uses kv head h // G, as SDPA's enable_gqa


def pick_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' -> flash-attn when it is installed and usable here (CUDA, fp16/bf16), else PyTorch SDPA."""
    usable = flash_attn_func is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if name == "auto":
        return "flash" if usable else "sdpa"
    if name == "flash" and not usable:
        raise FlashdecodeError("attention backend 'flash' needs flash-attn installed, a CUDA device and fp16/bf16")
    if name not in ("flash", "sdpa"):
        raise FlashdecodeError(f"unknown attention backend {name!r}; choose auto, flash or sdpa")
    return name
