"""Judge a decoder: PSNR/SSIM of decoded video against the ground-truth frames, per clip and overall,
beside the teacher's own decoder (the Wan conv decoder, or the demo PCA's linear inverse) when it has one.
Each clip's row also holds its per-frame PSNR (`psnr_per_frame`, `teacher_psnr_per_frame`) for a chart."""
from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

import torch

from .metrics import psnr, psnr_per_frame, ssim


def evaluate(decoder, clips: Iterable[tuple[str, torch.Tensor]], teacher, compare=None) -> list[dict]:
    """clips: (name, pixels [3, T, H, W] in [-1, 1]). Rows per clip, then an "overall" row (clip means).

    compare: a ComparisonWriter (flashdecode.training.compare) that gets each clip's panels as it is evaluated."""
    rows = []
    with torch.inference_mode():
        for name, clip in clips:
            pixels = clip[None].to(next(chain(teacher.parameters(), teacher.buffers())).device)
            latents = teacher.encode(pixels)
            decoded = decoder.decode(latents).float().cpu()
            row = {"clip": name, "frames": clip.shape[1], "size": f"{clip.shape[2]}x{clip.shape[3]}",
                   "psnr": psnr(decoded, clip[None])[0], "ssim": ssim(decoded, clip[None])[0],
                   "psnr_per_frame": psnr_per_frame(decoded, clip[None])[0]}
            baseline = None
            if hasattr(teacher, "decode"):
                baseline = teacher.decode(latents).float().clamp(-1, 1).cpu()
                row |= {"teacher_psnr": psnr(baseline, clip[None])[0], "teacher_ssim": ssim(baseline, clip[None])[0],
                        "teacher_psnr_per_frame": psnr_per_frame(baseline, clip[None])[0]}
            if compare is not None:
                compare.write_clip(clip, decoded[0], None if baseline is None else baseline[0])
            rows.append(row)
    if rows:
        keys = [k for k in rows[0] if k.endswith(("psnr", "ssim"))]
        rows.append({"clip": "overall", "frames": sum(r["frames"] for r in rows), "size": rows[0]["size"],
                     **{k: sum(r[k] for r in rows) / len(rows) for k in keys}})
    return rows
