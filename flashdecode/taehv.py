"""Tiny decoders of the TAEHV family (madebyollin/taehv, MIT): `--model taew2.1` / `taew2.2`, streamed.

TAEHV's decoder is a small conv net (~10 M parameters) that turns each latent frame into 4 pixel frames:

    latent frame -> 3 stages of [MemBlock x3, 2x upsample, TGrow, conv] -> conv -> pixels (x 2x2 unpatchify for 2.2)

- MemBlock: three 3x3 convs over [this frame, the previous frame *at the same depth*] plus a residual: the
  net's only memory is one frame per block, so a clip streams with O(1) state.
- TGrow: a 1x1 conv that widens the channels s-fold, then splits them into s consecutive frames (time x s).
  Two of the three stages grow time by 2, so one latent frame becomes 4 pixel frames.
- The "super" variant (taew2_2_super) swaps MemBlocks for ConvNeXt-style blocks (7x7 depthwise conv,
  inverted 1x1 bottleneck) and the upsample + conv for conv + PixelShuffle; the same streaming applies.

Frame count: like the Wan VAE's causal decoder, T latent frames give 1 + 4(T-1) pixel frames: the first
latent frame's 4 outputs are computed (later frames remember them) but only the last is shown, the same
trim as the reference's `decode_video`.

Latent space: TAEHV was trained on latents exactly as the diffusion model sees them, with no mean/std
(its README: "TAEHV encodes / decodes exactly what diffusion models use"). That is flashdecode's
diffusion-space, normalized latents, so `raw=False` latents go in as they are and `raw=True` (raw VAE
latents) are normalized with the latent space's mean/std first.

Weights: the taew2_1 / taew2_2 files of madebyollin/taehv as they are (.safetensors, or .pth read with
`torch.load(weights_only=True)`, never unpickled); their `decoder.N...` tensors load into the same names
here, their encoder tensors are ignored. Nothing is downloaded.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import check_float_weights
from .engine import as_latents, check_latents, latent_chunks, resolve_device, resolve_dtype
from .errors import FlashdecodeError, first_line, shown
from .latent_spaces import LatentSpace, get_latent_space

# --model -> (latent space, latent channels, pixel patch of the output: Wan2.2 unpatchifies 2x2)
MODELS = {"taew2.1": ("wan2.1", 16, 1), "taew2.2": ("wan2.2", 48, 2)}
TIME_UP = 4  # pixel frames per latent frame
FIRST_FRAME_TRIM = TIME_UP - 1  # the first latent frame shows only its last output frame (1 + 4(T-1) in all)


def conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3): out-of-distribution values cannot blow up the decoder."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block whose convs see the current frame and the previous frame at this depth."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(inplace=True), conv3x3(c, c), nn.ReLU(inplace=True),
                                  conv3x3(c, c))

    def forward(self, x, past):
        return self.conv(torch.cat([x, past], 1)).add_(x).relu_()  # in place: on the conv's fresh output


class SuperMemBlock(nn.Module):
    """The super variant's memory block: 7x7 depthwise conv, 4x inverted bottleneck, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 7, padding=3, groups=2 * c, bias=False),
                                  nn.Conv2d(2 * c, 4 * c, 1), nn.ReLU(inplace=True), nn.Conv2d(4 * c, c, 1, bias=False))

    def forward(self, x, past):
        return self.conv(torch.cat([x, past], 1)).add_(x)


class TGrow(nn.Module):
    """[B, n, C, H, W] -> [B, n*stride, C, H, W]: a 1x1 conv makes `stride` frames' channels per frame."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x):
        B, n, C, H, W = x.shape
        return self.conv(x.flatten(0, 1)).reshape(B, n * self.stride, C, H, W)


class Upsample2x(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


def base_layers(latent_channels: int, out_channels: int) -> list[nn.Module]:
    """taew2_1 / taew2_2: widths 256 -> 128 -> 64, time growth x1, x2, x2. Layer order = the files' key order."""
    layers = [SoftClamp(), conv3x3(latent_channels, 256), nn.ReLU(inplace=True)]
    for c_in, c_out, stride in ((256, 128, 1), (128, 64, 2), (64, 64, 2)):
        layers += [MemBlock(c_in), MemBlock(c_in), MemBlock(c_in), Upsample2x(), TGrow(c_in, stride),
                   conv3x3(c_in, c_out, bias=False)]
    return layers + [nn.ReLU(inplace=True), conv3x3(64, out_channels)]


def super_layers(latent_channels: int, out_channels: int) -> list[nn.Module]:
    """taew2_2_super: widths 512 -> 256 -> 128 -> 64, each stage ending in conv + PixelShuffle, then TGrow."""
    widths = (512, 256, 128, 64)
    layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 1, bias=False)]
    for c_in, c_out, stride in zip(widths, widths[1:], (1, 2, 2)):
        layers += [SuperMemBlock(c_in), SuperMemBlock(c_in), SuperMemBlock(c_in), conv3x3(c_in, 4 * c_out),
                   nn.ReLU(inplace=True), nn.PixelShuffle(2), TGrow(c_out, stride)]
    return layers + [conv3x3(widths[-1], out_channels)]


class TinyDecoder(nn.Module):
    """The decoder net, with `decoder.N.*` parameter names as in the TAEHV files, and its streaming state."""

    def __init__(self, latent_channels: int, patch: int, variant: str = "base"):
        super().__init__()
        self.latent_channels, self.patch, self.variant = latent_channels, patch, variant
        build = super_layers if variant == "super" else base_layers
        self.decoder = nn.Sequential(*build(latent_channels, 3 * patch * patch))
        self.memory: dict[int, torch.Tensor] = {}  # block index -> its input for the last frame it saw

    def reset(self) -> None:
        self.memory = {}

    def step(self, z: torch.Tensor) -> torch.Tensor:
        """One latent frame [B, C, h, w] -> its 4 pixel frames [B, 3, 4, H, W], [-1, 1] nominal, unclamped.

        The frames a layer makes from one latent frame run through the next layers together: a memory block's
        "previous frame" is the frame before in that group, or, for the group's first, the last frame of the
        previous latent frame (zeros at the start of a video).
        """
        B = z.shape[0]
        x = z[:, None]  # [B, frames at this depth, C, h, w]
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, (MemBlock, SuperMemBlock)):
                before = self.memory.get(i)
                if before is None:
                    before = torch.zeros_like(x[:, 0])
                past = torch.cat([before[:, None], x[:, :-1]], 1)
                self.memory[i] = x[:, -1].clone()  # one frame, not a view that keeps the whole group alive
                x = layer(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, (B, -1))
            elif isinstance(layer, TGrow):
                x = layer(x)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, (B, -1))
        if self.patch > 1:
            x = F.pixel_shuffle(x.flatten(0, 1), self.patch).unflatten(0, (B, -1))
        return x.transpose(1, 2).mul(2).sub(1)  # TAEHV's [0, 1] -> [-1, 1]; [B, 3, 4, H, W]


class TinyVideoDecoder:
    """A loaded TAEHV decoder with the shared decoder interface (see `engine.FAMILIES`)."""

    def __init__(self, name: str, net: TinyDecoder, latent_space: LatentSpace, random_weights: bool = False,
                 metadata: dict | None = None):
        self.name = name
        self.net = net.eval().requires_grad_(False)
        self.latent_space = latent_space
        self.random_weights = random_weights
        self.metadata = metadata or {}
        p = next(net.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.precision = str(self.dtype).removeprefix("torch.")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def weight_bytes(self) -> int:
        return sum(p.nbytes for p in self.net.parameters())

    def pixel_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.latent_space.spatial
        return h * s, w * s

    def flops_per_latent_frame(self, h: int, w: int) -> float:
        """Counted by FlopCounterMode on a meta-device copy (no compute); every latent frame costs the same."""
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            net = TinyDecoder(self.net.latent_channels, self.net.patch, self.net.variant)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net.step(torch.zeros(1, self.net.latent_channels, h, w, device="meta"))
        return float(counter.get_total_flops())

    def estimate_memory(self, batch: int, h: int, w: int) -> dict:
        """Rough peak bytes to decode a batch on an h x w latent grid: {part: bytes, ..., "total": bytes}.

        The peak is the last stage at full resolution: 4 frames of 64 channels made from 2 upsampled ones, a 3x3
        conv's input and output, the conv library's reordered copies: ~12 frames x 64 channels (16 for the super
        variant, whose bottlenecks and PixelShuffle stages hold more); plus one frame per memory block (3 per
        stage, at 1x, 2x, 4x the latent grid) and the pixel chunk (float32 render, clamp, uint8 copies: ~13
        bytes per pixel value), all x1.25 for allocator slack. Measured on the CPU at 512x320 in float32, above
        the loaded weights: taew2.1 608 MiB (this says 705), taew2_2_super 215 MiB (this says 281).
        """
        e, super_ = self.dtype.itemsize, self.net.variant == "super"
        H, W = self.pixel_size(h, w)
        full = (H // self.net.patch) * (W // self.net.patch)  # pixels of the last stage (before unpatchify)
        widths = (512, 256, 128) if super_ else (256, 128, 64)
        parts = {
            "weights": self.weight_bytes(),
            "activations": batch * (16 if super_ else 12) * 64 * full * e,
            "state": batch * 3 * sum(c * 4 ** i * h * w for i, c in enumerate(widths)) * e,
            "pixels": batch * TIME_UP * 3 * H * W * 13,
        }
        parts["total"] = int(1.25 * sum(parts.values()))
        return parts

    def reset(self) -> None:
        """Forget the previous video (the next frame is a first frame)."""
        self.net.reset()

    def check(self, z: torch.Tensor) -> None:
        check_latents(z, self.net.latent_channels, self.latent_space.name)

    def stream(self, frames: Iterable[torch.Tensor], raw: bool = False, start_index: int = 0,
               native: bool = False) -> Iterator[torch.Tensor]:
        """Latent frames [B,C,h,w] or chunks [B,C,t,h,w] -> pixel chunks [B,3,k,H,W] float32 in [-1, 1].

        k = 1 for a video's first latent frame, 4 after. `raw=True` takes raw VAE latents (normalized here,
        since TAEHV decodes diffusion-space latents); `raw=False` takes those diffusion-space latents as
        pipelines pass them. `start_index` is accepted for the shared interface: the pixels do not depend on
        it. `native=True` yields the net's own output (its dtype and device, not clamped).
        """
        first, shape = True, None
        with torch.inference_mode():
            for chunk in latent_chunks(frames, self, raw):
                if first:
                    self.net.reset()
                    shape = (chunk.shape[0], *chunk.shape[-2:])
                elif (chunk.shape[0], *chunk.shape[-2:]) != shape:
                    raise FlashdecodeError(f"latent frame of batch {chunk.shape[0]} and grid {chunk.shape[-2]}x"
                                           f"{chunk.shape[-1]} in the middle of a video of batch {shape[0]} and grid "
                                           f"{shape[1]}x{shape[2]}; all frames of a video must have one shape")
                for t in range(chunk.shape[2]):
                    px = self.net.step(chunk[:, :, t])
                    if first:
                        px, first = px[:, :, FIRST_FRAME_TRIM:], False
                    yield px if native else px.float().clamp_(-1, 1)

    def decode(self, latents: torch.Tensor, raw: bool = False, start_index: int = 0) -> torch.Tensor:
        """[B,C,T,h,w] -> [B,3,1+4(T-1),H,W] in [-1, 1] through the streaming path."""
        latents = as_latents(latents)
        self.check(latents)
        return torch.cat(list(self.stream([latents], raw=raw, start_index=start_index)), dim=2)


def open_decoder_file(path: Path) -> tuple[dict[str, torch.Size], Callable[[], dict[str, torch.Tensor]]]:
    """A TAEHV weight file's decoder tensors (`decoder.*`): their shapes, read from the header (safetensors) or a
    memory map (.pth/.pt through weights_only, never unpickled), and a function that reads them. The shapes are
    checked before anything is read, so a file claiming huge tensors costs nothing; the encoder's are never read."""
    if not path.is_file():
        raise FlashdecodeError(f"weights file {shown(path)} does not exist; pass --weights PATH to a TAEHV file such as "
                               "taew2_1.safetensors (from github.com/madebyollin/taehv; nothing is downloaded)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        def read_safetensors(names=None):
            with safe_open(str(path), framework="pt") as f:
                if names is None:
                    return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("decoder.")}
                return {k: f.get_tensor(k) for k in names}

        try:
            shapes = read_safetensors()
        except (SafetensorError, OSError) as e:
            raise FlashdecodeError(f"weights {shown(path)} is not a readable safetensors file ({e}); re-download it") from None
        return shapes, lambda: read_safetensors(list(shapes))
    if path.suffix not in (".pth", ".pt"):
        raise FlashdecodeError(f"weights {shown(path)} must be a .safetensors or .pth TAEHV file (e.g. taew2_1.safetensors)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise FlashdecodeError(f"refused {shown(path)}: it holds pickled objects, not only tensors, and is never "
                               "unpickled; use the .safetensors file of the same weights") from None
    except Exception as e:  # noqa: BLE001  (zip, EOF and torch errors all mean: not a readable .pth)
        raise FlashdecodeError(f"cannot read {shown(path)} as a .pth state dict ({first_line(e)}); "
                               "use the .safetensors file of the same weights") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FlashdecodeError(f"{shown(path)} is not a state dict of tensors, so not a TAEHV weight file")
    state = {k: v for k, v in state.items() if k.startswith("decoder.")}
    # Read (copied out of the map) only when asked: the decoder must not depend on the file staying as it is.
    return {k: v.shape for k, v in state.items()}, lambda: {k: v.clone() for k, v in state.items()}


def wider_tgrow(key: str, found: torch.Size, net: TinyDecoder) -> bool:
    """A TGrow weight trained to grow time more than this decoder does: it keeps the last frame's channels."""
    i = int(key.split(".")[1])
    want = net.decoder[i].conv.weight.shape if isinstance(net.decoder[i], TGrow) else None
    return key.endswith(".conv.weight") and want is not None and found[1:] == want[1:] and found[0] > want[0] \
        and found[0] % want[0] == 0


def check_shapes(found: dict[str, torch.Size], net: TinyDecoder, model: str, path) -> None:
    """One line for the first tensor of the file that does not fit `net` (names and shapes), with a hint."""
    if not found:
        raise FlashdecodeError(f"{shown(path)} holds no TAEHV decoder tensors (decoder.N.*); pass a taew2_1/taew2_2 "
                               "file of github.com/madebyollin/taehv")
    expected = {k: v.shape for k, v in net.state_dict().items()}
    problems = [f"{k} is {list(v)} in the file, {list(expected[k])} in {model}" for k, v in found.items()
                if k in expected and v != expected[k] and not wider_tgrow(k, v, net)]
    problems += [f"{k} is missing" for k in expected if k not in found]
    problems += [f"{shown(k, 80)} is unexpected" for k in found if k not in expected]
    if problems:
        first = found.get("decoder.0.weight", found.get("decoder.1.weight"))  # after the base's clamp
        channels = first[1] if first is not None and len(first) == 4 else None
        other = {c: m for m, (_, c, _) in MODELS.items()}.get(channels)
        hint = (f"it looks like {other} weights: pass --model {other}" if other not in (None, model) else
                "pass the taew2_1 file with --model taew2.1, taew2_2 with --model taew2.2")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FlashdecodeError(f"{shown(path)} does not fit --model {model}: {problems[0]}{more}; {hint}")


def fitted(state: dict[str, torch.Tensor], net: TinyDecoder, path) -> dict[str, torch.Tensor]:
    """The file's (shape-checked) tensors for `net`: wider TGrow weights cut to their last frame's channels, as
    TAEHV does; one line for a non-float, NaN or Inf tensor (it would decode to a black video)."""
    expected = net.state_dict()
    state = {k: v[-expected[k].shape[0]:] if wider_tgrow(k, v.shape, net) else v for k, v in state.items()}
    check_float_weights(state, path, "TAEHV weight file", "the file is corrupt: re-download it")
    return state


def random_decoder(latent_channels: int, patch: int, seed: int = 0) -> TinyDecoder:
    """The base decoder with PyTorch's default init, seeded, drawn on the CPU (the caller's RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyDecoder(latent_channels, patch)


def load(model: str, weights=None, device=None, dtype=None) -> TinyVideoDecoder:
    """A TAEHV decoder for `model` ("taew2.1" / "taew2.2") from a weight file, or "random" (seeded, for speed).

    The variant (base or super) is the file's: taew2_2_super's tensors build the super decoder.
    """
    if model not in MODELS:
        raise FlashdecodeError(f"unknown tiny decoder {model!r}; choose one of {', '.join(MODELS)}")
    if weights is None:
        raise FlashdecodeError(f"--model {model} needs --weights PATH to a TAEHV file ({model.replace('.', '_')}"
                               ".safetensors from github.com/madebyollin/taehv; nothing is downloaded), or --weights random")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    space_name, channels, patch = MODELS[model]
    meta: dict = {}
    if weights == "random":
        net = random_decoder(channels, patch)
    else:
        path = Path(weights)
        shapes, read = open_decoder_file(path)
        variant = "super" if "decoder.0.weight" in shapes else "base"  # base starts with a parameterless clamp
        with torch.device("meta"):  # no init work: every tensor comes from the file
            net = TinyDecoder(channels, patch, variant)
        check_shapes(shapes, net, model, path)
        net.load_state_dict(fitted(read(), net, path), assign=True)
        meta = {"source": str(path), "variant": variant}
    net = net.to(dev, dt)
    return TinyVideoDecoder(model, net, get_latent_space(space_name), random_weights=weights == "random", metadata=meta)


__all__ = ["MODELS", "TinyDecoder", "TinyVideoDecoder", "load"]
