"""Judge a decoder: PSNR/SSIM of decoded video against the ground-truth frames, per clip and overall,
beside the teacher's own decoder (the Wan conv decoder, or the demo PCA's linear inverse) when it has one."""
from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

import torch

from .metrics import psnr, ssim


def evaluate(decoder, clips: Iterable[tuple[str, torch.Tensor]], teacher) -> list[dict]:
    """clips: (name, pixels [3, T, H, W] in [-1, 1]). Rows per clip, then an "overall" row (clip means)."""
    rows = []
    with torch.inference_mode():
        for name, clip in clips:
            pixels = clip[None].to(next(chain(teacher.parameters(), teacher.buffers())).device)
            latents = teacher.encode(pixels)
            decoded = decoder.decode(latents).cpu()
            row = {"clip": name, "frames": clip.shape[1], "size": f"{clip.shape[2]}x{clip.shape[3]}",
                   "psnr": psnr(decoded, clip[None])[0], "ssim": ssim(decoded, clip[None])[0]}
            if hasattr(teacher, "decode"):
                baseline = teacher.decode(latents).float().clamp(-1, 1).cpu()
                row |= {"teacher_psnr": psnr(baseline, clip[None])[0], "teacher_ssim": ssim(baseline, clip[None])[0]}
            rows.append(row)
    if rows:
        keys = [k for k in rows[0] if k.endswith(("psnr", "ssim"))]
        rows.append({"clip": "overall", "frames": sum(r["frames"] for r in rows), "size": rows[0]["size"],
                     **{k: sum(r[k] for r in rows) / len(rows) for k in keys}})
    return rows
