"""The convolutional decoders FlashDecoder replaces: diffusers' `AutoencoderKLWan` (Wan2.1, Wan2.2).

Built with random weights: a conv net's speed and memory do not depend on its weight values, and no real
Wan weights can be downloaded here. Only the decoder half is kept (a decode-only pipeline never runs the
encoder), and latents are decoded exactly as diffusers' Wan pipelines do: denormalize with the VAE's
`latents_mean`/`latents_std`, then `vae.decode(z).sample`, which runs the causal conv decoder one latent
frame at a time through its feature cache, concatenates every output frame and clamps to [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import FlashdecodeError
from .latent_spaces import LatentSpace, get_latent_space

_WAN22 = get_latent_space("wan2.2")

# docs/design.md section 2: Wan2.1 is diffusers' defaults; Wan2.2 the 48-channel, /16 residual VAE.
CONFIGS: dict[str, dict] = {
    "wan2.1": {},
    "wan2.2": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=list(_WAN22.mean), latents_std=list(_WAN22.std)),
}
# Same structure, a few channels wide: for tests of the harness, not for numbers.
TINY = dict(base_dim=8, decoder_base_dim=8, num_res_blocks=1)


def _autoencoder_cls():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise FlashdecodeError("the Wan conv baselines need diffusers; install it with "
                               "`pip install flashdecode[baselines]`") from None
    return AutoencoderKLWan


def build_vae(name: str, size: str = "full", device="meta"):
    """The decoder half of `AutoencoderKLWan` for `name` ("wan2.1"/"wan2.2"); random weights (seed 0)."""
    if name not in CONFIGS:
        raise FlashdecodeError(f"unknown baseline {name!r}; choose one of {', '.join(CONFIGS)} or none")
    if size not in ("full", "tiny"):
        raise FlashdecodeError(f"unknown baseline size {size!r}; choose full or tiny")
    config = {**CONFIGS[name], **(TINY if size == "tiny" else {})}
    torch.manual_seed(0)
    with torch.device(device):
        vae = _autoencoder_cls()(**config)
    vae.encoder = vae.quant_conv = None  # never used to decode
    return vae.eval().requires_grad_(False)


@dataclass
class ConvBaseline:
    """A Wan VAE decoder ready to decode normalized latents the way a diffusers pipeline does."""

    name: str
    size: str
    vae: torch.nn.Module
    latent_space: LatentSpace
    device: torch.device
    dtype: torch.dtype
    random_weights: bool = True

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.vae.parameters())

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        s = self.vae.config.scale_factor_spatial
        if height % s or width % s:
            raise FlashdecodeError(f"{height}x{width} pixels is not a multiple of the {self.name} VAE's /{s}; "
                                   "pick a resolution that is")
        return height // s, width // s

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B,C,T,h,w] -> pixels [B,3,1+4(T-1),H,W] in [-1, 1] (diffusers' WanPipeline)."""
        with torch.inference_mode():
            z = latents.to(self.device, self.dtype)
            z = self.latent_space.denormalize(z)  # the pipeline's `latents / (1/std) + mean`
            return self.vae.decode(z).sample

    def flops(self, height: int, width: int, latent_frames: int) -> float:
        """Forward FLOPs of decoding a clip, counted by FlopCounterMode on a meta-device copy (no compute).

        Every latent frame after the first costs the same (the causal caches are full), so two short
        counts extrapolate exactly to any length.
        """
        from torch.utils.flop_counter import FlopCounterMode

        vae = build_vae(self.name, self.size, device="meta")
        h, w = self.latent_grid(height, width)
        counts = []
        for t in (1, 2):
            z = torch.zeros(1, self.latent_space.channels, t, h, w, device="meta")
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                vae.decode(z)
            counts.append(counter.get_total_flops())
        return float(counts[0] + (latent_frames - 1) * (counts[1] - counts[0]))


def load_baseline(name: str, device="cpu", dtype=torch.float32, size: str = "full") -> ConvBaseline:
    """A random-weight Wan conv decoder on `device` in `dtype` (size "tiny": a narrow copy for tests)."""
    device = torch.device(device)
    vae = build_vae(name, size, device=device)
    torch.nn.Module.to(vae, dtype=dtype)  # ModelMixin.to warns about from_pretrained on every cast
    return ConvBaseline(name, size, vae, get_latent_space(name), device, dtype)


__all__ = ["CONFIGS", "ConvBaseline", "build_vae", "load_baseline"]
