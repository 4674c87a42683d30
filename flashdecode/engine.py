"""The streaming engine: latent frames in, pixel chunks out, with memory that does not grow with length."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .checkpoint import check_fits, config_from_metadata, find_weights, load_checkpoint, load_weights, read_metadata, weights_dirs
from .errors import FlashdecodeError
from .fp8 import quantize_linears
from .latent_spaces import LatentSpace, get_latent_space
from .math import pick_backend
from .memory import check_memory
from .model import HIGH_PRECISION_LINEARS, VARIANTS, FlashDecoder, ModelConfig, count_parameters, flops_per_latent_frame
from .staging import Stager, require_finite

# "fp8": e4m3 weights for the Transformer's GEMMs (flashdecode.fp8), bf16 for everything else, on every device.
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "fp8": torch.bfloat16}
FP8_NAMES = ("fp8", torch.float8_e4m3fn)

# compile=None: eager. Measured (H200, XL 720p, ../shared perf note 2026-11-27): compiling saves ~2.3 ms per
# latent frame (33.0 -> 30.7 ms) and costs ~19 s of warm-up, so it pays after ~8,000 latent frames (~9 min
# of video); a 5-second clip (21 latent frames) would wait 19 s to save 0.05 s. Inductor's on-disk cache
# cuts a repeat warm-up several-fold (tiny on a 2-core CPU: 46 s -> 9 s), still far above that saving.
# compile=True is for long videos and servers that decode many clips of one size.
COMPILE_BY_DEFAULT = False

# The other decoder families, by --model name: (module, latent space). Each module offers `load(model, weights,
# device, dtype)` returning an object with the streaming interface below (see `Decoder`): name, latent_space,
# device, dtype, precision, random_weights, metadata, stream, decode, check, reset, pixel_size, num_parameters,
# weight_bytes, flops_per_latent_frame and estimate_memory. The pipeline, bench, eval, batch and diffusers paths
# know only that interface.
FAMILIES: dict[str, tuple[str, str]] = {
    "wan2.1-vae": ("wan_vae", "wan2.1"),  # the stock Wan VAE decoder, streamed through its causal cache
    "wan2.2-vae": ("wan_vae", "wan2.2"),
    "taew2.1": ("taehv", "wan2.1"),  # tiny decoders of the TAEHV family
    "taew2.2": ("taehv", "wan2.2"),
}


def resolve_device(device=None) -> torch.device:
    """A usable torch device; one clear FlashdecodeError for a name torch does not know, `meta` (no data),
    or a CUDA device this machine does not have."""
    try:
        if isinstance(device, bool):  # True is an int to torch (cuda:1): never what was meant
            raise TypeError
        if isinstance(device, int):  # an index is a CUDA device to torch: say so even where there is none
            device = torch.device("cuda", device)
        # device=0 is what torch means by it (cuda:0), not "no device": only None picks the default
        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError, ValueError):
        raise FlashdecodeError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "meta":
        raise FlashdecodeError("device 'meta' holds no data and cannot decode; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlashdecodeError(f"device {str(dev)!r} asked for, but this torch ({torch.__version__}) sees no "
                                   "CUDA GPU; use --device cpu, or install a CUDA build of torch on a GPU machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlashdecodeError(f"device {str(dev)!r} does not exist: this machine has "
                                   f"{torch.cuda.device_count()} CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type not in ("cpu", "mps"):
        raise FlashdecodeError(f"device {str(dev)!r} is not supported; use cpu or cuda")
    return dev


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on GPU, float32 on CPU unless asked otherwise (bf16 for "fp8")."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype in FP8_NAMES:
        return torch.bfloat16
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FlashdecodeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_latents(z: torch.Tensor, channels: int, space: str, patch: int = 1) -> None:
    """One FlashdecodeError sentence for latents [B,C,t,h,w] that a decoder of `channels` channels (and a grid
    that is a multiple of `patch`) cannot take, before torch sees them. Shared by every decoder family.

    NaN/Inf are checked here for latents in host memory; for latents on a GPU, `latent_chunks` checks them on
    the GPU and raises at the next chunk or at the end of the video, so the decode thread never waits."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor [B,C,t,h,w], not {type(z).__name__}")
    if z.is_complex() or not z.is_floating_point():
        raise FlashdecodeError(f"latents must be real floating point (float32, float16 or bfloat16), got {z.dtype}"
                               " (complex, integer and bool latents are refused, not silently converted)")
    if z.device.type == "meta":
        raise FlashdecodeError("latents are on the meta device and hold no data; pass a real tensor")
    if z.ndim != 5:
        raise FlashdecodeError(f"latents must be [B,C,h,w] frames or [B,C,t,h,w] chunks, got shape {list(z.shape)}")
    if 0 in z.shape:
        raise FlashdecodeError(f"latents have an empty axis (shape {list(z.shape)} as [B,C,t,h,w]); every axis "
                               "must be at least 1")
    if z.shape[1] != channels:
        raise FlashdecodeError(f"latents have {z.shape[1]} channels but latent space {space!r} has {channels}; pick "
                               "the matching --latent-space/--model, or --layout if the file is NTCHW")
    if z.shape[-2] % patch or z.shape[-1] % patch:
        raise FlashdecodeError(f"latent grid {z.shape[-2]}x{z.shape[-1]} must be a multiple of the {patch}x{patch} "
                               f"patch of {space!r}")
    if z.device.type != "cuda":  # on the GPU, `latent_chunks` checks without waiting for it (flashdecode.staging)
        require_finite(z)


def latent_chunks(frames: Iterable[torch.Tensor], decoder, raw: bool) -> Iterator[torch.Tensor]:
    """Latent frames [B,C,h,w] or chunks [B,C,t,h,w] -> checked [B,C,t,h,w] chunks on the decoder's device in its
    dtype, raw VAE latents (`raw=True`) normalized first in float32. Shared by every decoder family: on CUDA the
    chunks go through `Stager` (pinned, non_blocking, NaN/Inf checked on the GPU), so the host never waits."""
    if decoder.device.type == "meta":  # e.g. a diffusers adapter moved with .to("meta"): the output would be no data
        raise FlashdecodeError("the decoder's weights are on the meta device and hold no data; move it to cpu or "
                               "cuda (or load real weights) before decoding")
    stager = Stager(decoder.device)
    for chunk in frames:
        chunk = as_latents(chunk)
        if chunk.ndim == 4:
            chunk = chunk[:, :, None]
        decoder.check(chunk)
        stager.poll()  # NaN/Inf found in an earlier GPU chunk, once the GPU has said so
        chunk = stager.to_device(chunk)  # CUDA: pinned, non_blocking, on a side stream
        if raw:  # normalize in float32, whatever the decoding dtype
            chunk = decoder.latent_space.normalize(chunk.float())
        yield chunk.to(decoder.dtype)
    stager.finish()  # the end of the video: the last GPU verdicts


class Decoder:
    """A loaded FlashDecoder for one latent space: `stream` frames through it, or `decode` a whole clip."""

    def __init__(self, model: FlashDecoder, latent_space: LatentSpace, random_weights: bool = False,
                 metadata: dict | None = None, precision: str | None = None):
        checked_config(model.config)  # a FlashDecoder built by hand from a config that cannot work (0 heads)
        self.model = model.eval().requires_grad_(False)
        self.config: ModelConfig = model.config
        self.latent_space = latent_space
        self.random_weights = random_weights
        self.metadata = metadata or {}
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype  # dtype: what the model computes in (bf16 for fp8)
        self.precision = precision or str(self.dtype).removeprefix("torch.")  # "fp8", "bfloat16", ...

    @property
    def name(self) -> str:
        """The --model name: tiny, xs, s, b, l, xl."""
        return self.config.name

    def num_parameters(self) -> int:
        return count_parameters(self.config)  # fp8 weights are buffers, so count what the config holds

    def weight_bytes(self) -> int:
        """Bytes the loaded weights really take (fp8 weights, their scales and what stays in bf16/fp32)."""
        return sum(t.nbytes for t in [*self.model.parameters(), *self.model.buffers()])

    def flops_per_latent_frame(self, h: int, w: int) -> float:
        return flops_per_latent_frame(self.config, h // self.config.patch, w // self.config.patch)

    def pixel_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.latent_space.spatial
        return h * s, w * s

    def estimate_memory(self, batch: int, h: int, w: int) -> dict:
        """Rough peak bytes to decode a batch on an h x w latent grid: {part: bytes, ..., "total": bytes}.

        weights + KV ring buffers (depth x K,V x (W+1) frames) + the widest live activations (the refinement
        stage holds 4N tokens; a block keeps ~12 d-wide values per token alive: x, norm, q/k/v/o, SwiGLU's
        8d gate/up) + the pixel chunk (float32 render, clamp, uint8 copies: ~13 bytes per pixel value), all
        x1.25 for allocator slack. It assumes a fused attention kernel (SDPA flash/efficient or flash-attn),
        i.e. no N x N score matrix.
        """
        c, e = self.config, self.dtype.itemsize
        tokens = (h // c.patch) * (w // c.patch)
        H, W = self.pixel_size(h, w)
        parts = {
            "weights": self.num_parameters() * e,
            "kv_cache": c.depth * 2 * batch * c.kv_heads * (c.window + 1) * tokens * c.head_dim * e,
            "activations": batch * c.time_up * tokens * 12 * c.dim * e,
            "pixels": batch * c.time_up * 3 * H * W * 13,
        }
        parts["total"] = int(1.25 * sum(parts.values()))
        return parts

    def reset(self) -> None:
        """Forget the previous video (the next frame is a first frame)."""
        if self.model.caches is not None:
            self.model.reset()

    def check(self, z: torch.Tensor) -> None:
        """One FlashdecodeError sentence for latents the decoder cannot take, before torch sees them (see
        `check_latents`)."""
        check_latents(z, self.config.in_channels, self.latent_space.name, self.config.patch)

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
            for chunk in latent_chunks(frames, self, raw):
                B, _, T, h, w = chunk.shape
                grid = (h // self.config.patch, w // self.config.patch)
                if not started:
                    self._start(B, grid)
                    started = True
                elif (B, grid) != (self.model.batch, self.model.grid):
                    raise FlashdecodeError(f"latent frame of batch {B} and grid {h}x{w} in the middle of a video of "
                                           f"batch {self.model.batch}; all frames of a video must have one shape")
                for t in range(T):
                    px = self.model.step(chunk[:, :, t])
                    yield px if native else px.float().clamp_(-1, 1)

    def _start(self, batch: int, grid: tuple[int, int]) -> None:
        if self.model.caches is None or (batch, grid) != (self.model.batch, self.model.grid):
            check_memory(self, batch, grid[0] * self.config.patch, grid[1] * self.config.patch)
            self.model.caches = None  # free the old buffers before allocating new ones
            self.model.setup_caches(batch, *grid)
        else:
            self.model.reset()

    def decode(self, latents: torch.Tensor, raw: bool = False, start_index: int = 0) -> torch.Tensor:
        """[B,C,T,h,w] -> [B,3,1+4(T-1),H,W] through the streaming path."""
        latents = as_latents(latents)
        self.check(latents)
        return torch.cat(list(self.stream([latents], raw=raw, start_index=start_index)), dim=2)

    def decode_reference(self, latents: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """The same function as `decode`, computed in one masked whole-sequence pass (for tests/training)."""
        latents = as_latents(latents)
        self.check(latents)
        require_finite(latents)  # a test and training path: a wait for the GPU is fine here
        z = self.latent_space.normalize(latents.to(self.device, torch.float32)) if raw else latents
        with torch.inference_mode():
            return self.model.forward_reference(z.to(self.device, self.dtype)).float().clamp_(-1, 1)


def as_latents(latents) -> torch.Tensor:
    """A tensor, or an array-like (numpy) as one; TypeError naming what was passed instead (None, a string)."""
    if isinstance(latents, torch.Tensor):
        return latents
    try:
        import numpy as np

        if isinstance(latents, (np.ndarray, np.generic, list, tuple)):
            return torch.as_tensor(latents)
    except (TypeError, ValueError, RuntimeError):
        pass
    raise TypeError(f"latents must be a torch.Tensor or numpy array [B,C,T,h,w], not {type(latents).__name__}")


def checked_config(config: ModelConfig) -> ModelConfig:
    """ModelConfig.check as one FlashdecodeError line: a config that cannot be a FlashDecoder never builds."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a flashdecode ModelConfig, not {type(config).__name__}")
    try:
        config.check()
    except ValueError as e:
        raise FlashdecodeError(f"model config {config.name!r} is not a usable FlashDecoder: {e}") from None
    return config


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
    checked_config(config)
    with torch.device(resolve_device(device)):
        model = FlashDecoder(config)
    return init_weights(model, seed).to(dtype or torch.float32)


def load_decoder(model: str | None = "s", latent_space: str | None = None, weights=None, device=None, dtype=None,
                 backend: str = "auto", compile: bool | None = None) -> Decoder:
    """Load a FlashDecoder variant for a latent space.

    weights: a .safetensors path, "random" (seeded random init, for benchmarks), or None (look in the
    weights folders). model/latent_space None: taken from the checkpoint, else "s" / "wan2.2".
    dtype: "fp32", "bf16", "fp16" or "fp8" (e4m3 weights, per-row scaled activations, bf16 elsewhere;
    fp8 tensor-core GEMMs on compute capability 8.9+, dequantized elsewhere). Default bf16 on GPU, fp32 on CPU.
    compile: torch.compile the per-frame step (True/False); None = COMPILE_BY_DEFAULT (eager, see why there).
    """
    from .arguments import PATH, check_types

    check_types(weights=(weights, PATH, "a path to a .safetensors file, 'random' or None"))
    if model in FAMILIES:
        return load_family(model, latent_space, weights, device, dtype)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    fp8 = dtype in FP8_NAMES
    if compile not in (None, True, False):
        raise FlashdecodeError(f"compile must be True, False or None (the default), not {compile!r}")
    backend_name = pick_backend(backend, dev, dt)  # an unknown backend fails here, before any loading
    if model is not None and model not in VARIANTS:
        raise FlashdecodeError(f"unknown model {model!r}; choose one of {', '.join([*VARIANTS, *FAMILIES])}")
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
        meta = read_metadata(Path(weights))  # header only: config checked before anything is allocated
        ckpt_space = meta.get("latent_space")
        if latent_space and ckpt_space and latent_space != ckpt_space:
            raise FlashdecodeError(f"{weights} was trained for latent space {ckpt_space!r}, not {latent_space!r}; "
                                   "drop --latent-space or pass matching weights")
        latent_space = latent_space or ckpt_space
    space = get_latent_space(latent_space or "wan2.2")

    config = config_from_metadata(meta, weights)
    if config is None or (model is not None and model != config.name):
        config = ModelConfig.build(model or "s", space.name)
    if weights != "random":
        check_fits(weights, config)  # the file's tensor shapes against the config, from its header
        state, _ = load_checkpoint(Path(weights))
    net = build_model(config, dev)
    if state is not None:
        load_weights(net, state, weights)
        state = None  # the model holds the weights now: do not keep a second copy alive
    net = net.to(dt)
    if fp8:
        quantize_linears(net, keep=HIGH_PRECISION_LINEARS)  # each layer's GEMM path follows its device
    net.backend = backend_name
    if COMPILE_BY_DEFAULT if compile is None else compile:
        net.compile_frame()
    return Decoder(net, space, random_weights=weights == "random", metadata=meta, precision="fp8" if fp8 else None)


def load_family(model: str, latent_space: str | None, weights, device, dtype):
    """A decoder of another family (FAMILIES): the stock Wan VAE or a tiny TAEHV decoder, same interface."""
    import importlib

    module, space = FAMILIES[model]
    if latent_space not in (None, "auto", space):
        raise FlashdecodeError(f"--model {model} decodes {space} latents, not {latent_space}; drop --latent-space "
                               "or pick the matching model")
    if dtype in FP8_NAMES:
        raise FlashdecodeError(f"--dtype fp8 is for FlashDecoder models; the {model} decoder runs in bf16, fp16 or fp32")
    return importlib.import_module(f".{module}", __package__).load(model, weights=weights, device=device, dtype=dtype)


__all__ = ["Decoder", "check_latents", "latent_chunks", "load_decoder", "build_model", "init_weights", "count_parameters"]
