"""--scale: decoded frames resized where they are (the GPU), before the uint8 conversion.

Resizing on the device means a preview's smaller frames are what cross to the host and what the encoder
thread handles, so `--scale 0.5` makes every output (GIF/WebP/APNG previews, videos, PNGs) cheaper to write.
Sizes are rounded to even numbers: video encoders need them for YUV 4:2:0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import FlashdecodeError

SCALE_RANGE = (0.01, 4.0)


def check_scale(scale) -> float | None:
    """None or 1 (no resize) -> None; else the factor as a float, or one clear error."""
    if scale is None:
        return None
    lo, hi = SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not lo <= scale <= hi:
        raise FlashdecodeError(f"--scale {scale!r} is not a usable factor; give a number between {lo:g} and {hi:g} "
                               "(e.g. 0.5 for half the width and height)")
    return None if scale == 1 else float(scale)


def scaled_size(height: int, width: int, scale: float | None) -> tuple[int, int]:
    """(height, width) times `scale`, each rounded to the nearest even number, at least 2."""
    if scale is None:
        return height, width
    return tuple(max(2, 2 * round(n * scale / 2)) for n in (height, width))


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,C,k,H,W] -> [B,C,k,*size], float32: bilinear with antialiasing (an area filter when shrinking)."""
    B, C, k, H, W = pixels.shape
    if (H, W) == tuple(size):
        return pixels
    frames = pixels.float().transpose(1, 2).reshape(B * k, C, H, W)
    out = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.view(B, k, C, *size).transpose(1, 2)
