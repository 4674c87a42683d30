"""Reconstruction quality: PSNR and SSIM of video clips in [-1, 1], one float per clip.

Both are computed on [0, 1] (data range 1), the way image/video codecs and VAE papers report them.
PSNR pools the squared error over the whole clip (`psnr_per_frame`: over each frame); SSIM is the Wang et
al. (2004) index per frame and channel (gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region only,
as skimage with gaussian_weights=True, use_sample_covariance=False), averaged over the clip.
"""
from __future__ import annotations

import math

import torch


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] or [B, 3, T, H, W] in [-1, 1] -> float64 [B, 3, T, H, W] in [0, 1]."""
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5:
        raise ValueError(f"expected clips [B, C, T, H, W] or [C, T, H, W], got {list(x.shape)}")
    return (x.double() + 1) / 2


def _frame_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean squared error of each frame of each clip, in float64 on [0, 1]: [B, T]."""
    x, y = _as_batch(x), _as_batch(y)
    return (x - y).square().mean(dim=(1, 3, 4))


def _db(mse: float) -> float:
    """PSNR in dB for a data range of 1 (inf where identical)."""
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def psnr(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """PSNR in dB of each clip (inf where identical). Its frames are one size, so the mean of their MSEs is the
    MSE pooled over the clip."""
    return [_db(m) for m in _frame_mse(x, y).mean(1).tolist()]


def psnr_per_frame(x: torch.Tensor, y: torch.Tensor) -> list[list[float]]:
    """PSNR in dB of each frame of each clip (inf where identical): what a per-frame chart plots."""
    return [[_db(m) for m in clip] for clip in _frame_mse(x, y).tolist()]


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> list[float]:
    """Mean SSIM of each clip over its frames and channels."""
    x, y = _as_batch(x), _as_batch(y)
    b, c, t, h, w = x.shape
    if min(h, w) < window:
        raise ValueError(f"frames of {h}x{w} are smaller than the {window}x{window} SSIM window")
    # Every frame and channel is one image [N, 1, H, W]; a few at a time keeps float64 memory bounded.
    x = x.permute(0, 2, 1, 3, 4).reshape(-1, 1, h, w)
    y = y.permute(0, 2, 1, 3, 4).reshape(-1, 1, h, w)
    means = torch.cat([ssim_per_image(xs, ys, window, sigma) for xs, ys in zip(x.split(32), y.split(32))])
    return means.view(b, -1).mean(1).tolist()


def _band(g: torch.Tensor, n: int) -> torch.Tensor:
    """[n, n - len(g) + 1] matrix whose columns are the window `g` sliding down: z @ band = valid 1D filter."""
    k = len(g)
    rows = torch.arange(n, device=g.device)[:, None] - torch.arange(n - k + 1, device=g.device)[None, :]
    return torch.where((rows >= 0) & (rows < k), g[rows.clamp(0, k - 1)], g.new_zeros(()))


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each image [N, 1, H, W] in [0, 1] over the valid (unpadded) region -> [N].

    Differentiable, in x's dtype and device: usable as a training loss (1 - ssim). Never under autocast: the
    variances E[x^2] - E[x]^2 cancel catastrophically in bf16 (a noisy loss that made bf16 training worse).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ssim_map(x, y, window, sigma).flatten(1).mean(1)


def _ssim_map(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    g = _gaussian_window(window, sigma, x.device).to(x.dtype)  # made on the device: a host copy would sync
    bh, bw = _band(g, x.shape[-2]), _band(g, x.shape[-1])
    blur = lambda z: bh.T @ z @ bw  # noqa: E731  separable gaussian, valid region; matmuls beat conv2d ~15x on CPU
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


__all__ = ["psnr", "psnr_per_frame", "ssim", "ssim_per_image"]
