"""Teacher encoders: pixel clips [B, 3, T, H, W] in [-1, 1] -> NORMALIZED latents [B, C, 1+(T-1)/4, H/s, W/s].

Every teacher has: .name, .latent_space (LatentSpace), .spatial (pixels per latent cell), .encode(pixels),
.decode(latents) (its own decoder, for comparisons), .encode_stream(chunks), .fingerprint() and .to(device).

- WanTeacher: the diffusers AutoencoderKLWan (Wan2.1: 16 ch, /8; Wan2.2: 48 ch, /16) from a LOCAL path only.
- PCATeacher (flashdecode.demo_codec): the bundled linear demo codec.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Iterator

import torch

from ..errors import FlashdecodeError
from ..latent_spaces import LatentSpace, get_latent_space
# The Wan VAE loader is the wan2.1-vae/wan2.2-vae decoder family's (flashdecode.wan_vae).
from ..wan_vae import Z_DIM_TO_SPACE, load_wan_vae, tiny_wan_vae
from .demo_codec import PCATeacher

class WanTeacher(torch.nn.Module):
    """A Wan VAE as teacher: encode -> latent_dist.mode() -> normalize with the latent space's constants."""

    def __init__(self, vae, latent_space: str | None = None, source: str = ""):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        detected = Z_DIM_TO_SPACE.get(vae.config.z_dim)
        if detected is None:
            raise FlashdecodeError(f"the VAE has z_dim {vae.config.z_dim}; only Wan2.1 (16) and Wan2.2 (48) are known")
        if latent_space is not None and latent_space != detected:
            raise FlashdecodeError(f"the VAE at {source or 'the given path'} is {detected} (z_dim {vae.config.z_dim}), "
                                   f"not {latent_space}; pass --teacher {detected}")
        self.latent_space: LatentSpace = get_latent_space(detected)
        self.name = detected
        self.source = source

    @classmethod
    def load(cls, path, latent_space: str | None = None, config: dict | None = None,
             device=None, dtype=torch.float32) -> "WanTeacher":
        vae = load_wan_vae(path, config, dtype)
        vae = vae.to(device) if device is not None else vae
        return cls(vae, latent_space, source=str(path))

    @property
    def spatial(self) -> int:
        return self.latent_space.spatial

    @property
    def channels(self) -> int:
        return self.latent_space.channels

    def _to_vae(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        t = pixels.shape[2]
        if (t - 1) % 4:
            raise ValueError(f"{t} frames is not 4k+1")
        z = self.vae.encode(self._to_vae(pixels)).latent_dist.mode()
        return self.latent_space.normalize(z.float())

    @torch.no_grad()
    def encode_stream(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The conv encoder needs the whole clip at once: gather the chunks, encode, yield latent frames [B, C, h, w]."""
        latents = self.encode(torch.cat(list(chunks), dim=2))
        yield from latents.unbind(2)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> the conv decoder's pixels in [-1, 1] (the quality reference)."""
        z = self.latent_space.denormalize(latents.float())
        return self.vae.decode(self._to_vae(z)).sample.float().clamp(-1, 1)

    def fingerprint(self) -> str:
        config = {k: v for k, v in self.vae.config.items() if not k.startswith("_")}  # not _name_or_path etc.
        h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for key, value in sorted(self.vae.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().cpu().numpy().tobytes()[:4096])  # a sample of each tensor: fast, still specific
        return h.hexdigest()[:16]


def load_teacher(name: str = "demo", path=None, device=None) -> torch.nn.Module:
    """'demo' -> PCATeacher (path or the bundled weights); 'wan2.1'/'wan2.2' -> WanTeacher from a local path."""
    if name in ("demo", "demo-pca", "pca"):
        teacher = PCATeacher.load(path)
    elif name in ("wan2.1", "wan2.2"):
        if path is None:
            raise FlashdecodeError(f"--teacher {name} needs --vae PATH: a local diffusers AutoencoderKLWan folder or "
                                   "a Wan VAE checkpoint file (nothing is downloaded)")
        teacher = WanTeacher.load(path, name)
    else:
        raise FlashdecodeError(f"unknown teacher {name!r}; choose demo, wan2.1 or wan2.2")
    return teacher.to(device) if device is not None else teacher


__all__ = ["WanTeacher", "PCATeacher", "load_wan_vae", "tiny_wan_vae", "load_teacher"]
