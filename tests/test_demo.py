"""The bundled demo: sample latents (a real held-out clip) decode with the bundled decoder to recognisable video."""
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch

import flashdecode
from flashdecode.latents_io import open_latents
from flashdecode.training.metrics import psnr, ssim
from flashdecode.training.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "cockatoo_256x256_41f.safetensors"
SOURCE = REPO / "samples" / "cockatoo_256x256_41f.mp4"  # the frames it was encoded from (H.264 CRF 8, 45.6 dB)
FLOOR_DB = 33.7  # measured 33.86 dB (SSIM 0.922); the PCA's linear inverse gets 31.54 dB (0.895) here


def source_frames() -> torch.Tensor:
    with av.open(str(SOURCE)) as f:
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, T, H, W]


def sample_latents() -> torch.Tensor:
    return torch.cat(list(open_latents(str(SAMPLE)).chunks), dim=2).float()


def test_bundled_decoder_beats_its_floor_and_the_linear_baseline():
    decoder = flashdecode.load_decoder(None, "demo")  # found in weights/ by latent space
    assert not decoder.random_weights
    latents, source = sample_latents(), source_frames()
    decoded = decoder.decode(latents)
    assert decoded.shape == source.shape == (1, 3, 41, 256, 256)
    learned = psnr(decoded, source)[0]
    linear = psnr(load_teacher("demo").decode(latents), source)[0]
    assert learned >= FLOOR_DB, (learned, linear)
    assert learned > linear, (learned, linear)
    assert ssim(decoded, source)[0] > 0.85


def test_first_command_decodes_the_sample_to_a_playable_mp4(tmp_path):
    out = tmp_path / "cockatoo.mp4"
    r = subprocess.run([sys.executable, "-m", "flashdecode", "decode", str(SAMPLE), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "random" not in r.stderr  # the bundled weights, not random ones
    with av.open(str(out)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 41 and frames[0].shape == (256, 256, 3)
    decoded = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    assert psnr(decoded, source_frames())[0] > FLOOR_DB - 2  # H.264 at the default CRF costs a little
