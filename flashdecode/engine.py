"""The streaming engine: latent frames in, pixel chunks out, with memory that does not grow with length."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .checkpoint import config_from_metadata, find_weights, load_checkpoint, load_weights, weights_dirs
from .errors import FlashdecodeError
from .latent_spaces import LatentSpace, get_latent_space
from .math import pick_backend
from .model import VARIANTS, FlashDecoder, ModelConfig, count_parameters, flops_per_latent_frame

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """bf16 on GPU, float32 on CPU unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FlashdecodeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class Decoder:
    """A loaded FlashDecoder for one latent space: `stream` frames through it, or `decode` a whole clip."""

    def __init__(self, model: FlashDecoder, latent_space: LatentSpace, random_weights: bool = False,
                 metadata: dict | None = None):
        self.model = model.eval().requires_grad_(False)
        self.config: ModelConfig = model.config
        self.latent_space = latent_space
        self.random_weights = random_weights
        self.metadata = metadata or {}
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def flops_per_latent_frame(self, h: int, w: int) -> float:
        return flops_per_latent_frame(self.config, h // self.config.patch, w // self.config.patch)

    def pixel_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.latent_space.spatial
        return h * s, w * s

    def reset(self) -> None:
        """Forget the previous video (the next frame is a first frame)."""
        if self.model.caches is not None:
            self.model.reset()

    def check(self, z: torch.Tensor) -> None:
        c, p = self.config, self.config.patch
        if z.ndim != 5:
            raise FlashdecodeError(f"latents must be [B,C,h,w] frames or [B,C,t,h,w] chunks, got shape {list(z.shape)}")
        if z.shape[1] != c.in_channels:
            raise FlashdecodeError(f"latents have {z.shape[1]} channels but latent space {self.latent_space.name!r} "
                                   f"has {c.in_channels}; pick the matching --latent-space/--model, or --layout if "
                                   "the file is NTCHW")
        if z.shape[-2] % p or z.shape[-1] % p:
            raise FlashdecodeError(f"latent grid {z.shape[-2]}x{z.shape[-1]} must be a multiple of the {p}x{p} patch "
                                   f"of {self.latent_space.name!r}")

    def stream(self, frames: Iterable[torch.Tensor], raw: bool = False, start_index: int = 0,
               native: bool = False) -> Iterator[torch.Tensor]:
        """Latent frames [B,C,h,w] or chunks [B,C,t,h,w] -> pixel chunks [B,3,k,H,W] float32 in [-1, 1].

        Each chunk is yielded as soon as its latent frame is decoded (k = 1 for the first frame, 4 after).
        `raw=True` takes un-normalized VAE latents. `start_index` is the absolute index of the first
        frame; the pixels do not depend on it (positions are relative to the window).
        `native=True` yields the model's own output instead: its dtype, on its device, not clamped, and
        valid only until the next chunk is requested (it may be a reused buffer). For converters that
        fuse clamp + colour conversion on the device, skipping a float32 copy per chunk.
        """
        started = False
        with torch.inference_mode():
            for chunk in frames:
                chunk = torch.as_tensor(chunk)
                if chunk.ndim == 4:
                    chunk = chunk[:, :, None]
                self.check(chunk)
                if raw:  # normalize in float32, whatever the decoding dtype
                    chunk = self.latent_space.normalize(chunk.to(self.device, torch.float32))
                chunk = chunk.to(self.device, self.dtype)
                B, _, T, h, w = chunk.shape
                grid = (h // self.config.patch, w // self.config.patch)
                if not started:
                    self._start(B, grid, start_index)
                    started = True
                elif (B, grid) != (self.model.batch, self.model.grid):
                    raise FlashdecodeError(f"latent frame of batch {B} and grid {h}x{w} in the middle of a video of "
                                           f"batch {self.model.batch}; all frames of a video must have one shape")
                for t in range(T):
                    px = self.model.step(chunk[:, :, t])
                    yield px if native else px.float().clamp_(-1, 1)

    def _start(self, batch: int, grid: tuple[int, int], start_index: int) -> None:
        if self.model.caches is None or (batch, grid) != (self.model.batch, self.model.grid):
            self.model.caches = None  # free the old buffers before allocating new ones
            self.model.setup_caches(batch, *grid, start_index=start_index)
        else:
            self.model.reset(start_index)

    def decode(self, latents: torch.Tensor, raw: bool = False, start_index: int = 0) -> torch.Tensor:
        """[B,C,T,h,w] -> [B,3,1+4(T-1),H,W] through the streaming path."""
        latents = torch.as_tensor(latents)
        self.check(latents)
        return torch.cat(list(self.stream([latents], raw=raw, start_index=start_index)), dim=2)

    def decode_reference(self, latents: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """The same function as `decode`, computed in one masked whole-sequence pass (for tests/training)."""
        latents = torch.as_tensor(latents)
        self.check(latents)
        z = self.latent_space.normalize(latents.to(self.device, torch.float32)) if raw else latents
        with torch.inference_mode():
            return self.model.forward_reference(z.to(self.device, self.dtype)).float().clamp_(-1, 1)


def init_weights(model: FlashDecoder, seed: int = 0) -> FlashDecoder:
    """Seeded GPT-2 style init: N(0, 0.02) linears, zero biases, residual outputs scaled by depth."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn where the weights live: XL is 769 M numbers
    scale = (2 * (model.config.depth + model.config.refine_depth)) ** -0.5
    for name, p in model.named_parameters():
        if p.ndim == 2:
            std = 0.02 * (scale if name.endswith(("attn.wo.weight", "mlp.w2.weight")) else 1.0)
            p.data.normal_(0.0, std, generator=gen)
        elif name.endswith("bias"):
            p.data.zero_()
    return model


def build_model(config: ModelConfig, device=None, dtype=None, seed: int = 0) -> FlashDecoder:
    with torch.device(resolve_device(device)):
        model = FlashDecoder(config)
    return init_weights(model, seed).to(dtype or torch.float32)


def load_decoder(model: str | None = "s", latent_space: str | None = None, weights=None, device=None, dtype=None,
                 backend: str = "auto") -> Decoder:
    """Load a FlashDecoder variant for a latent space.

    weights: a .safetensors path, "random" (seeded random init, for benchmarks), or None (look in the
    weights folders). model/latent_space None: taken from the checkpoint, else "s" / "wan2.2".
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model is not None and model not in VARIANTS:
        raise FlashdecodeError(f"unknown model {model!r}; choose one of {', '.join(VARIANTS)}")
    if latent_space is not None:
        try:
            get_latent_space(latent_space)
        except ValueError as e:
            raise FlashdecodeError(str(e)) from None

    meta: dict = {}
    state = None
    if weights is None:
        path = find_weights(model, latent_space)
        if path is None:
            raise FlashdecodeError(
                f"no weights for model {model or 'any'!r} in latent space {latent_space or 'any'!r} in "
                f"{', '.join(str(d) for d in weights_dirs())}; train some with `flashdecode train`, pass "
                "--weights PATH, or --weights random to benchmark with random weights")
        weights = path
    if weights != "random":
        state, meta = load_checkpoint(Path(weights))
        ckpt_space = meta.get("latent_space")
        if latent_space and ckpt_space and latent_space != ckpt_space:
            raise FlashdecodeError(f"{weights} was trained for latent space {ckpt_space!r}, not {latent_space!r}; "
                                   "drop --latent-space or pass matching weights")
        latent_space = latent_space or ckpt_space
    space = get_latent_space(latent_space or "wan2.2")

    config = config_from_metadata(meta)
    if config is None or (model is not None and model != config.name):
        config = ModelConfig.build(model or "s", space.name)
    net = build_model(config, dev)
    if state is not None:
        load_weights(net, state, weights)
    net = net.to(dt)
    net.backend = pick_backend(backend, dev, dt)
    return Decoder(net, space, random_weights=state is None, metadata=meta)


__all__ = ["Decoder", "load_decoder", "build_model", "init_weights", "count_parameters"]
