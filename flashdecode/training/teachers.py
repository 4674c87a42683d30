"""Teacher encoders: pixel clips [B, 3, T, H, W] in [-1, 1] -> NORMALIZED latents [B, C, 1+(T-1)/4, H/s, W/s].

Every teacher has: .name, .latent_space (LatentSpace), .spatial (pixels per latent cell), .encode(pixels),
.decode(latents) (its own decoder, for comparisons), .encode_stream(chunks), .fingerprint() and .to(device).

- WanTeacher: the diffusers AutoencoderKLWan (Wan2.1: 16 ch, /8; Wan2.2: 48 ch, /16) from a LOCAL path only.
- PCATeacher (flashdecode.demo_codec): the bundled linear demo codec.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..checkpoint import check_finite
from ..errors import FlashdecodeError, shown
from ..latent_spaces import LATENT_SPACES, LatentSpace, get_latent_space
from .demo_codec import PCATeacher

# AutoencoderKLWan configs of the real VAEs (docs/design.md section 2); a single-file checkpoint gets the one its z_dim names.
WAN_CONFIGS = {
    "wan2.1": {},  # diffusers' defaults are the Wan2.1 VAE
    "wan2.2": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=list(LATENT_SPACES["wan2.2"].mean),
                   latents_std=list(LATENT_SPACES["wan2.2"].std)),
}
Z_DIM_TO_SPACE = {16: "wan2.1", 48: "wan2.2"}
CORRUPT_VAE = "the VAE file is corrupt: re-download or re-convert it"
# A tiny random AutoencoderKLWan of each kind for tests: same shape contract, builds in milliseconds.
TINY_WAN_CONFIGS = {
    "wan2.1": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "wan2.2": dict(WAN_CONFIGS["wan2.2"], base_dim=8, decoder_base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
}


def _autoencoder_class():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise FlashdecodeError("the Wan teacher needs diffusers; install it with `pip install 'flashdecode[baselines]'`") from None
    return AutoencoderKLWan


def tiny_wan_vae(latent_space: str = "wan2.2", seed: int = 0, save_to=None):
    """A random-weight AutoencoderKLWan with a reduced config (for tests); optionally saved as a diffusers folder."""
    torch.manual_seed(seed)
    vae = _autoencoder_class()(**TINY_WAN_CONFIGS[latent_space]).eval()
    if save_to is not None:
        vae.save_pretrained(str(save_to))
    return vae


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # Original Wan checkpoints are .pth state dicts: tensors only, never unpickle arbitrary objects.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _z_dim(state: dict[str, torch.Tensor]) -> int:
    for key in ("post_quant_conv.weight", "conv2.weight"):  # diffusers / original Wan naming
        if key in state and state[key].ndim:
            return state[key].shape[0]
    raise FlashdecodeError("the checkpoint has no post_quant_conv/conv2 weight, so it is not a Wan VAE; "
                           "pass a Wan2.1/Wan2.2 VAE file or a diffusers AutoencoderKLWan folder")


def load_wan_vae(path, config: dict | None = None, dtype=torch.float32):
    """AutoencoderKLWan from a local diffusers folder (config.json + weights, or a pipeline folder with vae/),
    or from a single checkpoint file (original Wan .pth/.safetensors or a diffusers-named state dict).

    Never touches the network. For a single file the config is the real Wan2.1/Wan2.2 one chosen by z_dim,
    unless `config` (AutoencoderKLWan kwargs) says otherwise.
    """
    cls = _autoencoder_class()
    path = Path(path)
    if not path.exists():
        raise FlashdecodeError(f"Wan VAE {path} does not exist; pass --vae PATH to a local diffusers AutoencoderKLWan "
                               "folder or a Wan2.1/Wan2.2 VAE checkpoint file (nothing is downloaded)")
    if path.is_dir():
        folder = path / "vae" if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise FlashdecodeError(f"{path} has no config.json (nor vae/config.json); pass a diffusers AutoencoderKLWan folder")
        try:
            vae = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise FlashdecodeError(f"cannot load the Wan VAE from {folder}: {str(e).splitlines()[0]}; "
                                   "check it is a complete diffusers AutoencoderKLWan folder") from None
        check_finite(vae.state_dict(), folder, CORRUPT_VAE)
        return vae.eval()
    try:
        state = _read_state_dict(path)
    except Exception as e:  # noqa: BLE001  (pickle, safetensors and zip errors all mean the same to the user)
        raise FlashdecodeError(f"cannot read {path} as a checkpoint ({str(e).splitlines()[0]}); "
                               "pass a .safetensors or .pth Wan VAE state dict") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise FlashdecodeError(f"{shown(path)} is not a state dict (names -> tensors); pass a .safetensors or .pth Wan VAE "
                               "state dict")
    if config is None:
        space = Z_DIM_TO_SPACE.get(_z_dim(state))
        if space is None:
            raise FlashdecodeError(f"{path} has z_dim {_z_dim(state)}; only Wan2.1 (16) and Wan2.2 (48) VAEs are known")
        config = WAN_CONFIGS[space]
    if "decoder.middle.0.residual.0.gamma" in state:
        # Original Wan naming: diffusers' own single-file converter renames it (it knows the Wan2.1 layout).
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = convert_wan_vae_to_diffusers(state)
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        raise FlashdecodeError(f"{shown(path)} holds {shown(not_float[0], 80)} as {state[not_float[0]].dtype}, not floating point; "
                               "it is not a Wan VAE checkpoint")
    check_finite(state, path, CORRUPT_VAE)
    vae = cls(**config)
    # Load strictly: diffusers' from_single_file quietly keeps random weights for missing keys (0.42).
    expected = vae.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise FlashdecodeError(f"{shown(path)}: {shown(wrong[0], 80)} is {list(state[wrong[0]].shape)} in the file, "
                               f"{list(expected[wrong[0]].shape)} in AutoencoderKLWan({json.dumps(config)[:80]}...)"
                               f"{more}; pass the Wan VAE the file claims to be, or its diffusers folder")
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        bad = [f"{k} missing" for k in missing] + [f"{k} unexpected" for k in unexpected]
        raise FlashdecodeError(f"{path} does not match AutoencoderKLWan({json.dumps(config)[:80]}...): {bad[0]} "
                               f"(and {len(bad) - 1} more); convert it to a diffusers folder with diffusers' "
                               "scripts/convert_wan_to_diffusers.py and pass the folder")
    return (vae if dtype == torch.float32 else vae.to(dtype)).eval()


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


__all__ = ["WanTeacher", "PCATeacher", "load_wan_vae", "tiny_wan_vae", "load_teacher", "WAN_CONFIGS", "TINY_WAN_CONFIGS"]
