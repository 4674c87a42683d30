"""The stock Wan VAE decoder (diffusers' `AutoencoderKLWan`, Wan2.1 and Wan2.2), streamed one latent frame at a time.

    decoder = flashdecode.load_decoder("wan2.1-vae", weights="path/to/Wan2.1-T2V-1.3B-Diffusers")
    for pixels in decoder.stream(latent_frames):   # [B,16,h,w] frames in, [B,3,k,8h,8w] chunks out
        ...

diffusers' `vae.decode(z)` already runs the causal conv decoder one latent frame at a time: every causal conv
keeps the last two frames of its input in a feature cache (`feat_cache`, walked in a fixed order by
`feat_idx`), so a frame needs only the cache and itself. But it then concatenates every output frame on the
device and returns the whole clip, so its memory grows with the clip's length. Here the same per-frame calls
(`post_quant_conv`, then `decoder(..., feat_cache, feat_idx, first_chunk)`, then Wan2.2's unpatchify) yield
each frame's pixels as they are made: the same function, with memory flat in the length.

Weights are what Wan users have (`load_wan_vae`): a diffusers `AutoencoderKLWan` folder, a pipeline folder
with `vae/`, or the original single-file checkpoint (.pth read with weights_only=True, or .safetensors).
Only the decoder half is kept. `weights="random"` builds the real architecture with random weights
(speed and memory of a conv net do not depend on its weight values; no Wan weights can be downloaded here).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .engine import as_latents, check_latents, latent_chunks, resolve_device, resolve_dtype
from .checkpoint import check_finite, check_float_weights
from .errors import FlashdecodeError, first_line, shown
from .latent_spaces import LATENT_SPACES, LatentSpace, get_latent_space

# AutoencoderKLWan configs of the real VAEs (docs/design.md section 2); a single-file checkpoint gets the one
# its z_dim names. Wan2.1 is diffusers' defaults; Wan2.2 the 48-channel, /16 residual VAE.
CONFIGS: dict[str, dict] = {
    "wan2.1": {},
    "wan2.2": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=list(LATENT_SPACES["wan2.2"].mean),
                   latents_std=list(LATENT_SPACES["wan2.2"].std)),
}
# Same structure, a few channels wide: builds in milliseconds, for tests (not for numbers).
TINY_CONFIGS: dict[str, dict] = {
    "wan2.1": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "wan2.2": dict(CONFIGS["wan2.2"], base_dim=8, decoder_base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
}
Z_DIM_TO_SPACE = {16: "wan2.1", 48: "wan2.2"}
CORRUPT_VAE = "the VAE file is corrupt: re-download or re-convert it"
WEIGHTS_HELP = ("a diffusers AutoencoderKLWan folder, a pipeline folder with vae/, or the Wan VAE checkpoint "
                "(.pth or .safetensors)")


def autoencoder_class():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise FlashdecodeError("the Wan VAE needs diffusers; install it with `pip install 'flashdecode[baselines]'`") from None
    return AutoencoderKLWan


# -- loading --------------------------------------------------------------------------------------------

def tiny_wan_vae(latent_space: str = "wan2.2", seed: int = 0, save_to=None):
    """A random-weight AutoencoderKLWan with a reduced config (for tests); optionally saved as a diffusers folder."""
    torch.manual_seed(seed)
    vae = autoencoder_class()(**TINY_CONFIGS[latent_space]).eval()
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
                           f"pass {WEIGHTS_HELP}")


def load_wan_vae(path, config: dict | None = None, dtype=torch.float32, option: str = "--vae"):
    """AutoencoderKLWan from a local diffusers folder (config.json + weights, or a pipeline folder with vae/),
    or from a single checkpoint file (original Wan .pth/.safetensors or a diffusers-named state dict).

    Never touches the network. For a single file the config is the real Wan2.1/Wan2.2 one chosen by z_dim,
    unless `config` (AutoencoderKLWan kwargs) says otherwise. `option` names the flag in error messages.
    """
    cls = autoencoder_class()
    path = Path(path)
    if not path.exists():
        raise FlashdecodeError(f"Wan VAE {shown(path)} does not exist; pass {option} PATH to {WEIGHTS_HELP} "
                               "(nothing is downloaded)")
    if path.is_dir():
        folder = path / "vae" if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise FlashdecodeError(f"{shown(path)} has no config.json (nor vae/config.json); pass a diffusers AutoencoderKLWan folder")
        try:
            vae = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise FlashdecodeError(f"cannot load the Wan VAE from {shown(folder)}: {first_line(e)}; "
                                   "check it is a complete diffusers AutoencoderKLWan folder") from None
        check_finite(vae.state_dict(), folder, CORRUPT_VAE)
        return vae.eval()
    try:
        state = _read_state_dict(path)
    except Exception as e:  # noqa: BLE001  (pickle, safetensors and zip errors all mean the same to the user)
        raise FlashdecodeError(f"cannot read {shown(path)} as a checkpoint ({first_line(e)}); "
                               "pass a .safetensors or .pth Wan VAE state dict") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise FlashdecodeError(f"{shown(path)} is not a state dict (names -> tensors); pass a .safetensors or .pth Wan VAE "
                               "state dict")
    if config is None:
        space = Z_DIM_TO_SPACE.get(_z_dim(state))
        if space is None:
            raise FlashdecodeError(f"{shown(path)} has z_dim {_z_dim(state)}; only Wan2.1 (16) and Wan2.2 (48) VAEs are known")
        config = CONFIGS[space]
    if "decoder.middle.0.residual.0.gamma" in state:
        # Original Wan naming: diffusers' own single-file converter renames it (it knows the Wan2.1 layout).
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = convert_wan_vae_to_diffusers(state)
    check_float_weights(state, path, "Wan VAE checkpoint", CORRUPT_VAE)
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
        raise FlashdecodeError(f"{shown(path)} does not match AutoencoderKLWan({json.dumps(config)[:80]}...): {bad[0]} "
                               f"(and {len(bad) - 1} more); convert it to a diffusers folder with diffusers' "
                               "scripts/convert_wan_to_diffusers.py and pass the folder")
    return (vae if dtype == torch.float32 else vae.to(dtype)).eval()


def decoder_half(vae):
    """The VAE without its encoder (a decode-only run never uses it: it is most of a Wan2.2 VAE's weights)."""
    vae.encoder = vae.quant_conv = None
    return vae.eval().requires_grad_(False)


def build_vae(space: str, size: str = "full", device="meta"):
    """The decoder half of `AutoencoderKLWan` for `space` ("wan2.1"/"wan2.2") with random weights (seed 0);
    size "tiny": the narrow test config."""
    if space not in CONFIGS:
        raise FlashdecodeError(f"unknown Wan VAE {space!r}; choose one of {', '.join(CONFIGS)}")
    if size not in ("full", "tiny"):
        raise FlashdecodeError(f"unknown Wan VAE size {size!r}; choose full or tiny")
    with torch.device("meta"):  # shapes only: the encoder (most of a Wan2.2 VAE) is never allocated
        vae = decoder_half(autoencoder_class()(**(CONFIGS if size == "full" else TINY_CONFIGS)[space]))
    vae.to_empty(device=device)
    torch.manual_seed(0)
    for m in vae.modules():  # the values diffusers' constructor gives: PyTorch's conv init, RMS norm gains of 1
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            m.reset_parameters()
        elif type(m).__name__ == "WanRMS_norm":
            m.gamma.data.fill_(1.0)
            if isinstance(m.bias, torch.nn.Parameter):
                m.bias.data.zero_()
    return vae


# -- the streamed decoder -------------------------------------------------------------------------------

class WanVAEDecoder:
    """A Wan VAE's conv decoder with the streaming interface of every decoder family (see engine.Decoder)."""

    def __init__(self, name: str, vae, latent_space: LatentSpace, random_weights: bool = False,
                 metadata: dict | None = None):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

        self.name = name  # the --model name: wan2.1-vae, wan2.2-vae
        self.vae = vae
        self.latent_space = latent_space
        self.random_weights = random_weights
        self.metadata = metadata or {}
        p = next(vae.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.precision = str(self.dtype).removeprefix("torch.")
        # The VAE's own constants, as diffusers' WanPipeline uses them (a real VAE's equal the latent space's).
        self.mean = torch.tensor(vae.config.latents_mean, device=self.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, device=self.device).view(1, -1, 1, 1, 1)
        self.num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.patch_size = vae.config.patch_size  # Wan2.2 folds 2x2 pixels into channels; Wan2.1 none
        self.unpatchify = unpatchify
        self.cache: list | None = None  # one entry per causal conv: the last frames of its input
        self.shape: tuple | None = None  # (batch, h, w) of the video being decoded
        self.frames = 0  # latent frames decoded in this video

    # -- sizes

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.vae.parameters())

    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in [*self.vae.parameters(), *self.vae.buffers()])

    def pixel_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.vae.config.scale_factor_spatial
        return h * s, w * s

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Pixels -> the latent grid; one line if the size is not a multiple of the VAE's stride."""
        s = self.vae.config.scale_factor_spatial
        if height % s or width % s:
            raise FlashdecodeError(f"{height}x{width} pixels is not a multiple of the {self.name} decoder's /{s}; "
                                   "pick a resolution that is")
        return height // s, width // s

    def flops_per_latent_frame(self, h: int, w: int) -> float:
        """Forward FLOPs of one latent frame after the first (all cost the same once the caches are full)."""
        return profile(self.vae.config, self.dtype, h, w)["flops"]

    def flops(self, height: int, width: int, latent_frames: int) -> float:
        """FLOPs of decoding a whole clip of `latent_frames` at height x width pixels."""
        p = profile(self.vae.config, self.dtype, *self.latent_grid(height, width))
        return float(p["first_flops"] + (latent_frames - 1) * p["flops"])

    def estimate_memory(self, batch: int, h: int, w: int) -> dict:
        """Rough peak bytes to decode a batch on an h x w latent grid: {part: bytes, ..., "total": bytes}.

        weights + the causal feature cache (two input frames per conv, measured on a meta-device copy) + live
        activations (the widest tensor of a frame's pass x4: a conv's input, its cache-padded copy, its output
        and the residual beside it) + the pixel chunk (float32, clamp and uint8 copies: ~13 bytes per value)
        + on the CPU, the widest conv's im2col buffer (torch's CPU conv3d unfolds its input: 27x a 3x3x3 conv's
        input, the largest single allocation there), all x1.25 for allocator slack.
        """
        p = profile(self.vae.config, self.dtype, h, w)
        H, W = self.pixel_size(h, w)
        parts = {
            "weights": self.weight_bytes(),
            "feature_cache": batch * p["cache_bytes"],
            "activations": batch * 4 * p["largest_bytes"],
            "pixels": batch * 4 * 3 * H * W * 13,
            "conv_workspace": p["columns_bytes"] if self.device.type == "cpu" else 0,
        }
        parts["total"] = int(1.25 * sum(parts.values()))
        return parts

    # -- decoding

    def check(self, z: torch.Tensor) -> None:
        """One FlashdecodeError sentence for latents the decoder cannot take, before torch sees them."""
        check_latents(z, self.vae.config.z_dim, self.latent_space.name)  # any grid: the conv decoder has no patch

    def reset(self) -> None:
        """Forget the previous video (the next frame is a first frame); frees the feature cache."""
        self.cache = self.shape = None
        self.frames = 0

    def stream(self, frames: Iterable[torch.Tensor], raw: bool = False, start_index: int = 0,
               native: bool = False) -> Iterator[torch.Tensor]:
        """Latent frames [B,C,h,w] or chunks [B,C,t,h,w] -> pixel chunks [B,3,k,H,W] float32 in [-1, 1].

        Each chunk is yielded as soon as its latent frame is decoded (k = 1 for the first frame, 4 after).
        `raw=False` takes diffusion-space latents and denormalizes them with the VAE's latents_mean/std,
        as diffusers' WanPipeline does; `raw=True` takes the VAE's own latents. Every call starts a new video
        (`start_index` is accepted for the common interface; the pixels do not depend on it). `native=True`
        yields the decoder's own output: its dtype, not clamped.
        """
        self.reset()
        with torch.inference_mode():
            for z in latent_chunks(frames, self, raw=False):  # as given: on the device, in the decoder's dtype
                if not raw:  # WanPipeline: latents.to(vae.dtype) / (1 / std) + mean (here via float32)
                    z = (z.float() * self.std + self.mean).to(self.dtype)
                B, _, T, h, w = z.shape
                if self.shape is None:
                    self.cache, self.shape = [None] * self.num_convs, (B, h, w)
                elif (B, h, w) != self.shape:
                    raise FlashdecodeError(f"latent frame of batch {B} and grid {h}x{w} in the middle of a video of "
                                           f"batch {self.shape[0]} and grid {self.shape[1]}x{self.shape[2]}; all "
                                           "frames of a video must have one shape")
                for t in range(T):
                    px = self._frame(z[:, :, t:t + 1])
                    yield px if native else px.float().clamp_(-1, 1)

    def _frame(self, z: torch.Tensor) -> torch.Tensor:
        """One latent frame [B,C,1,h,w] -> its pixels, exactly as AutoencoderKLWan._decode's loop body."""
        x = self.vae.decoder(self.vae.post_quant_conv(z), feat_cache=self.cache, feat_idx=[0],
                             first_chunk=self.frames == 0)
        self.frames += 1
        return self.unpatchify(x, self.patch_size) if self.patch_size else x

    def decode(self, latents: torch.Tensor, raw: bool = False, start_index: int = 0) -> torch.Tensor:
        """[B,C,T,h,w] -> [B,3,1+4(T-1),H,W] through the streaming path."""
        latents = as_latents(latents)
        self.check(latents)
        return torch.cat(list(self.stream([latents], raw=raw)), dim=2)

    def decode_with_diffusers(self, latents: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """diffusers' own whole-clip call, `vae.decode(z).sample` (all frames concatenated on the device): the
        reference `decode` equals, and the baseline `flashdecode bench` measures."""
        with torch.inference_mode():
            z = latents.to(self.device, torch.float32)
            z = z if raw else z * self.std + self.mean
            return self.vae.decode(z.to(self.dtype)).sample


@lru_cache(maxsize=16)
def _meta_copy(config_json: str, dtype: torch.dtype):
    with torch.device("meta"):
        vae = autoencoder_class()(**json.loads(config_json))
    return torch.nn.Module.to(decoder_half(vae), dtype=dtype)


def profile(config, dtype: torch.dtype, h: int, w: int) -> dict:
    """FLOPs and memory of one batch-1 latent frame on an h x w grid, from a pass over a meta-device copy
    (shapes only, no compute, no memory): the first frame's FLOPs, a later frame's FLOPs, the feature cache's
    bytes once full, and the widest tensor a later frame makes."""
    config = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    return dict(_profile(config, dtype, h, w))


@lru_cache(maxsize=64)
def _profile(config_json: str, dtype: torch.dtype, h: int, w: int) -> tuple:
    from torch.utils.flop_counter import FlopCounterMode

    vae = _meta_copy(config_json, dtype)
    dec = WanVAEDecoder("meta", vae, get_latent_space(Z_DIM_TO_SPACE.get(vae.config.z_dim, "wan2.2")))
    dec.cache, dec.shape = [None] * dec.num_convs, (1, h, w)  # what stream() sets up, without its data checks
    z = torch.zeros(1, vae.config.z_dim, 1, h, w, device="meta", dtype=dtype)
    counts, largest, columns = [], LargestTensor(), [0]

    def im2col(conv, args, out):  # the CPU's conv3d unfolds its input: C_in x kernel volume x output positions
        columns[0] = max(columns[0], conv.in_channels * math.prod(conv.kernel_size) * out[0, 0].numel() * out.itemsize)

    hooks = [m.register_forward_hook(im2col) for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    try:
        for i in range(2):
            with FlopCounterMode(display=False) as counter, largest if i else nullcontext():
                dec._frame(z)
            counts.append(counter.get_total_flops())
    finally:
        for hook in hooks:
            hook.remove()
    cache_bytes = sum(c.nbytes for c in dec.cache if isinstance(c, torch.Tensor))
    return (("first_flops", float(counts[0])), ("flops", float(counts[1])), ("cache_bytes", cache_bytes),
            ("largest_bytes", largest.bytes), ("columns_bytes", columns[0]))


class LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any op returns (on meta tensors: shapes only)."""

    bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.nbytes)
        return out


# -- entry points ---------------------------------------------------------------------------------------

def load(model: str, weights=None, device=None, dtype=None) -> WanVAEDecoder:
    """`load_decoder("wan2.1-vae" | "wan2.2-vae", weights=PATH | "random")`: the decoder half on `device` in
    `dtype` (default bf16 on GPU, float32 on CPU)."""
    space = model.removesuffix("-vae")
    if space not in CONFIGS:
        raise FlashdecodeError(f"unknown Wan VAE model {model!r}; choose wan2.1-vae or wan2.2-vae")
    if weights is None:
        raise FlashdecodeError(f"--model {model} needs --weights PATH: {WEIGHTS_HELP}; nothing is downloaded (or "
                               "--weights random to measure speed and memory)")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if weights == "random":
        return _random_decoder(space, "full", dev, dt)
    vae = load_wan_vae(weights, option="--weights")
    found = Z_DIM_TO_SPACE.get(vae.config.z_dim)
    if found != space:
        what = f"a {found} VAE" if found else f"a VAE with z_dim {vae.config.z_dim}"
        fix = f"pass --model {found}-vae" if found else "pass a Wan2.1 or Wan2.2 VAE"
        raise FlashdecodeError(f"{shown(weights)} is {what} (z_dim {vae.config.z_dim}), not {space}; {fix}")
    vae = decoder_half(vae)
    torch.nn.Module.to(vae, device=dev, dtype=dt)  # ModelMixin.to warns about from_pretrained on every cast
    return WanVAEDecoder(model, vae, get_latent_space(space), metadata={"latent_space": space, "weights": str(weights)})


def load_baseline(name: str, device="cpu", dtype=torch.float32, size: str = "full") -> WanVAEDecoder:
    """A random-weight Wan VAE decoder for `flashdecode bench` ("wan2.1"/"wan2.2"; size "tiny": the test config)."""
    return _random_decoder(name, size, torch.device(device), dtype)


def _random_decoder(space: str, size: str, device: torch.device, dtype: torch.dtype) -> WanVAEDecoder:
    """The decoder half of a random-weight Wan VAE ("full": the real config; "tiny": the test one)."""
    vae = build_vae(space, size, device=device)
    torch.nn.Module.to(vae, dtype=dtype)  # ModelMixin.to warns about from_pretrained on every cast
    return WanVAEDecoder(f"{space}-vae", vae, get_latent_space(space), random_weights=True,
                         metadata={"latent_space": space, "weights": "random"})


__all__ = ["CONFIGS", "TINY_CONFIGS", "WanVAEDecoder", "build_vae", "load", "load_baseline", "load_wan_vae",
           "tiny_wan_vae"]
