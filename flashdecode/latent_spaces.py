"""Latent spaces a decoder can be trained for: channel count, patching and normalization constants.

Diffusion-space ("normalized") latents are (z - mean) / std per channel; the raw VAE works on z.
The model always works on normalized latents.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

_WAN21_MEAN = "-0.7571 -0.7089 -0.9113 0.1075 -0.1745 0.9653 -0.1517 1.5508 0.4134 -0.0715 0.5517 -0.3632 -0.1922 -0.9497 0.2503 -0.2921"
_WAN21_STD = "2.8184 1.4541 2.3275 2.6558 1.2196 1.7708 2.6052 2.0743 3.2687 2.1526 2.8652 1.5579 1.6382 1.1253 2.8251 1.9160"
_WAN22_MEAN = (
    "-0.2289 -0.0052 -0.1323 -0.2339 -0.2799 0.0174 0.1838 0.1557 -0.1382 0.0542 0.2813 0.0891 0.1570 -0.0098 "
    "0.0375 -0.1825 -0.2246 -0.1207 -0.0698 0.5109 0.2665 -0.2108 -0.2158 0.2502 -0.2055 -0.0322 0.1109 0.1567 "
    "-0.0729 0.0899 -0.2799 -0.1230 -0.0313 -0.1649 0.0117 0.0723 -0.2839 -0.2083 -0.0520 0.3748 0.0152 0.1957 "
    "0.1433 -0.2944 0.3573 -0.0548 -0.1681 -0.0667"
)
_WAN22_STD = (
    "0.4765 1.0364 0.4514 1.1677 0.5313 0.4990 0.4818 0.5013 0.8158 1.0344 0.5894 1.0901 0.6885 0.6165 0.8454 "
    "0.4978 0.5759 0.3523 0.7135 0.6804 0.5833 1.4146 0.8986 0.5659 0.7069 0.5338 0.4889 0.4917 0.4069 0.4999 "
    "0.6866 0.4093 0.5709 0.6065 0.6415 0.4944 0.5726 1.2042 0.5458 1.6887 0.3971 1.0600 0.3943 0.5537 0.5444 "
    "0.4089 0.7468 0.7744"
)


@dataclass(frozen=True)
class LatentSpace:
    name: str
    channels: int
    patch: int  # latent patch (p x p) that makes one 16x16-pixel token
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""

    @property
    def spatial(self) -> int:
        """Pixels per latent cell along each spatial axis."""
        return 16 // self.patch

    def _stats(self, z: torch.Tensor, channel_dim: int):
        shape = [1] * z.ndim
        shape[channel_dim] = self.channels
        mean, std = _constants(self, z.device, z.dtype)
        return mean.view(shape), std.view(shape)

    def normalize(self, z: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Raw VAE latents -> diffusion-space latents."""
        mean, std = self._stats(z, channel_dim)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Diffusion-space latents -> raw VAE latents."""
        mean, std = self._stats(z, channel_dim)
        return z * std + mean


@functools.lru_cache(maxsize=None)
def _constants(space: LatentSpace, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A space's mean and std as tensors, made once per device and dtype: building them from Python floats
    on a GPU is a pageable copy, a host sync, which per chunk would stall the decode loop."""
    with torch.inference_mode(False):  # ordinary tensors, usable under autograd (training) too
        return (torch.tensor(space.mean, dtype=dtype, device=device),
                torch.tensor(space.std, dtype=dtype, device=device))


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split())


LATENT_SPACES: dict[str, LatentSpace] = {
    "wan2.2": LatentSpace("wan2.2", 48, 1, _floats(_WAN22_MEAN), _floats(_WAN22_STD), "Wan2.2 VAE: 48 ch, /16, /4 causal"),
    "wan2.1": LatentSpace("wan2.1", 16, 2, _floats(_WAN21_MEAN), _floats(_WAN21_STD), "Wan2.1 VAE: 16 ch, /8, /4 causal"),
    # The bundled demo codec (a PCA teacher): Wan2.2's shape contract, latents already unit-normalized.
    "demo": LatentSpace("demo", 48, 1, (0.0,) * 48, (1.0,) * 48, "bundled demo codec (PCA), Wan2.2 shape contract"),
}


def get_latent_space(name: str) -> LatentSpace:
    try:
        return LATENT_SPACES[name]
    except KeyError:
        raise ValueError(f"unknown latent space {name!r}; choose one of {', '.join(LATENT_SPACES)}") from None


def pixel_frames(latent_frames: int) -> int:
    """Causal /4 time: L latent frames decode to 1 + 4(L-1) pixel frames."""
    return 1 + 4 * (latent_frames - 1) if latent_frames > 0 else 0


def latent_frames(pixel_frames: int) -> int:
    if pixel_frames < 1 or (pixel_frames - 1) % 4:
        raise ValueError(f"{pixel_frames} pixel frames is not 4k+1")
    return 1 + (pixel_frames - 1) // 4
