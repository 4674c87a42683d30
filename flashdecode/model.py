"""FlashDecoder: a pure Transformer that turns one latent frame at a time into 4 pixel frames.

Per latent frame (docs/design.md section 3): patchify + embed -> D pre-norm GQA blocks attending to the
current frame and the previous W frames through a rolling KV cache -> temporal-first upsampling x4 ->
2 refinement blocks along the 4 sub-frames -> spatial head + PixelShuffle(16) -> RGB in [-1, 1].

Two entry points compute the same function: `step` (streaming, ring-buffer KV cache, never a mask: a
video's first frames attend to the filled prefix of the buffer) and `forward_reference` (whole sequence, explicit block-causal sliding-window mask).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .latent_spaces import get_latent_space
from .math import apply_rope, attention, rope_3d, rope_angles, rope_table

# Tokens per refinement/head chunk. 1024 tokens are 4096 sub-frame rows: GEMMs of 4096 x d x 4d still fill
# an H100 (over 1,500 128x128 output tiles for XL), while XL 720p's 3,600 tokens take 4 chunks, cutting the
# refinement/head activation peak about 3.5x.
RENDER_CHUNK = 1024

# Linears that stay in the compute dtype under fp8: the latent embedding and the final pixel projection, the
# layers whose rounding reaches the pixels most directly (demo decoder: 40.6 -> 43.2 dB against float32 when
# kept), 0.2% of XL's weights.
HIGH_PRECISION_LINEARS = ("embed", "head.4")

# name: (depth, width, heads, kv heads). s/b/l/xl reproduce the paper's 56.8/161.7/348.0/769.3 M.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 1),  # tests
    "xs": (4, 256, 4, 1),  # the bundled demo decoder
    "s": (12, 512, 8, 2),
    "b": (16, 768, 12, 3),
    "l": (20, 1024, 16, 4),
    "xl": (20, 1536, 24, 3),
}


@dataclass(frozen=True)
class ModelConfig:
    name: str = "s"
    depth: int = 12
    dim: int = 512
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    window: int = 2  # past latent frames each layer sees through the KV cache
    refine_depth: int = 2
    time_up: int = 4  # pixel sub-frames per latent frame
    in_channels: int = 48
    patch: int = 1  # latent patch per 16x16-pixel token
    pixel_patch: int = 16
    rope_axes: tuple[int, int, int] = (24, 20, 20)
    rope_theta: float = 10000.0

    @classmethod
    def build(cls, variant: str, latent_space: str = "wan2.2") -> "ModelConfig":
        if variant not in VARIANTS:
            raise ValueError(f"unknown model {variant!r}; choose one of {', '.join(VARIANTS)}")
        depth, dim, heads, kv = VARIANTS[variant]
        space = get_latent_space(latent_space)
        return cls(variant, depth, dim, heads, kv, in_channels=space.channels, patch=space.patch)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def check(self) -> None:
        """Raise ValueError naming the first field outside what a FlashDecoder can be (types, bounds and
        consistency), so a config read from a file is refused before it sizes any allocation."""
        ints = {"depth": (1, 64), "dim": (1, 8192), "heads": (1, 128), "kv_heads": (1, 128), "head_dim": (2, 512),
                "window": (0, 64), "refine_depth": (0, 16), "time_up": (1, 16), "in_channels": (1, 1024),
                "patch": (1, 16), "pixel_patch": (1, 64)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{name} is {v!r}; it must be an integer from {lo} to {hi}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        axes = self.rope_axes
        if (not isinstance(axes, tuple) or len(axes) != 3 or any(type(a) is not int or a < 2 or a % 2 for a in axes)
                or sum(axes) != self.head_dim or self.head_dim % 2):
            raise ValueError(f"rope_axes {axes!r} must be 3 even integers adding up to head_dim ({self.head_dim})")
        if type(self.rope_theta) not in (int, float) or not 1 < self.rope_theta < 1e12:
            raise ValueError(f"rope_theta is {self.rope_theta!r}; it must be a number above 1")
        if not isinstance(self.name, str):
            raise ValueError(f"name is {self.name!r}; it must be a string")

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        if "rope_axes" in d and isinstance(d["rope_axes"], list):
            d["rope_axes"] = tuple(d["rope_axes"])
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class KVCache:
    """One ring buffer of W+1 latent frames' keys and values, [B, kv, (W+1)*N, head_dim], written in place.

    Keys are stored before RoPE: each step rotates them by their age in the window, so positions stay
    bounded however long the video is. With grad enabled (training) the update is out of place, so each
    step's buffer stays intact for backward. Not module state: never saved, averaged or synced.
    """

    def __init__(self, batch: int, kv_heads: int, slots: int, tokens: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, slots * tokens, head_dim)
        # Uninitialized: a video's first frames read only the filled prefix of the buffer (`filled`), so no
        # row is read before it is written and zero-filling would be dead work.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    def update(self, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)  # autocast may hand bf16 to a float32 buffer
        if torch.is_grad_enabled():
            self.k, self.v = self.k.index_copy(2, index, k), self.v.index_copy(2, index, v)
        else:
            self.k.index_copy_(2, index, k)
            self.v.index_copy_(2, index, v)
        return self.k, self.v


def keep_unfused_names(module: nn.Module, fused: str, parts: dict[str, int]) -> None:
    """`module.<fused>` is one Linear standing for several (one GEMM instead of 2-3 thin ones); checkpoints
    keep naming the parts: state_dict() splits its weight into `parts` (name: output rows) and
    load_state_dict() joins them back. The checkpoint format is unchanged by the fusion."""
    names = [f"{name}.weight" for name in parts]

    def split(mod, state, prefix, local_metadata):
        weight = state.pop(prefix + fused + ".weight", None)
        if weight is not None:
            state.update(zip((prefix + n for n in names), weight.split(list(parts.values()))))

    def join(mod, state, prefix, *_):
        if all(prefix + n in state for n in names):
            state[prefix + fused + ".weight"] = torch.cat([state.pop(prefix + n) for n in names])

    module.register_state_dict_post_hook(split)
    module.register_load_state_dict_pre_hook(join)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), with w1|w3 computed as one projection `w13`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        keep_unfused_names(self, "w13", {"w1": hidden, "w3": hidden})

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.heads, c.kv_heads, c.head_dim
        self.sizes = [c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim]
        # q, k and v as one GEMM: GQA leaves k and v thin (192 columns each in XL), a poor fit for a GPU alone.
        self.wqkv = nn.Linear(c.dim, sum(self.sizes), bias=False)
        self.wo = nn.Linear(c.heads * c.head_dim, c.dim, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(c.head_dim, eps=1e-6), nn.RMSNorm(c.head_dim, eps=1e-6)
        keep_unfused_names(self, "wqkv", dict(zip(("wq", "wk", "wv"), self.sizes)))

    def project(self, x):
        """x [B, L, d] -> q [B, H, L, 64], k, v [B, KV, L, 64]; q and k normalized, not yet rotated."""
        q, k, v = self.wqkv(x).split(self.sizes, dim=-1)
        q = self.q_norm(q.unflatten(-1, (self.heads, self.head_dim))).transpose(1, 2)
        k = self.k_norm(k.unflatten(-1, (self.kv_heads, self.head_dim))).transpose(1, 2)
        v = v.unflatten(-1, (self.kv_heads, self.head_dim)).transpose(1, 2)
        return q, k, v


class Block(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(c.dim, eps=1e-6), nn.RMSNorm(c.dim, eps=1e-6)
        self.attn = Attention(c)
        self.mlp = SwiGLU(c.dim, 4 * c.dim)
        self.grad_checkpoint = False

    def forward(self, x, q_rope, k_rope, mask=None, cache: KVCache | None = None, index=None, backend="sdpa",
                filled: int | None = None):
        q, k, v = self.attn.project(self.attn_norm(x))
        if cache is not None:
            k, v = cache.update(index, k, v)
            if filled is not None:  # a video's first frames: only the buffer's first `filled` rows hold frames
                k, v = k[:, :, :filled], v[:, :, :filled]
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._finish, x, q, k, v, q_rope, k_rope, mask, backend, use_reentrant=False)
        return self._finish(x, q, k, v, q_rope, k_rope, mask, backend)

    def _finish(self, x, q, k, v, q_rope, k_rope, mask, backend):
        out = attention(apply_rope(q, q_rope), apply_rope(k, k_rope), v, mask, backend)
        x = x + self.attn.wo(out.transpose(1, 2).flatten(2))
        return x + self.mlp(self.mlp_norm(x))


class FlashDecoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Linear(c.in_channels * c.patch * c.patch, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.time_up = nn.Linear(c.dim, c.time_up * c.dim)
        self.refine = nn.ModuleList(Block(c) for _ in range(c.refine_depth))
        self.head = nn.Sequential(
            nn.RMSNorm(c.dim, eps=1e-6),
            nn.Linear(c.dim, 4 * c.dim),
            nn.GELU(),
            nn.Linear(4 * c.dim, c.dim),
            nn.Linear(c.dim, 3 * c.pixel_patch**2),
        )
        self.backend = "sdpa"
        self.render_chunk = RENDER_CHUNK
        self.caches: list[KVCache] | None = None
        self.compiled_frame = None  # set by compile_frame()

    # -- shared pieces -------------------------------------------------------------------------------

    def tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Latent frames [B, C, h, w] -> embedded tokens [B, N, d] (p x p latent patches per token)."""
        p = self.config.patch
        B, C, h, w = z.shape
        z = z.reshape(B, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // p) * (w // p), C * p * p)
        return self.embed(z)

    def grid_rope(self, gh: int, gw: int, t: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
        """3D RoPE table for frames at time positions t [F]: [2, F*gh*gw, 64] (cos, signed sin), frame-major."""
        tt, hh, ww = torch.meshgrid(t.to(device), torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        angles = rope_3d(tt.flatten(), hh.flatten(), ww.flatten(), self.config.rope_axes, self.config.rope_theta)
        return rope_table(angles).to(dtype)

    def sub_frame_rope(self, device, dtype=torch.float32) -> torch.Tensor:
        """1D RoPE table over the 4 sub-frame positions, the whole head dim: [2, 4, 64]."""
        c = self.config
        return rope_table(rope_angles(torch.arange(c.time_up, device=device), c.head_dim, c.rope_theta)).to(dtype)

    def render(self, x: torch.Tensor, gh: int, gw: int, rope: torch.Tensor) -> torch.Tensor:
        """Backbone tokens [F, N, d] -> pixels [F, 3, 4, 16gh, 16gw]: upsample in time, refine, spatial head.

        Token by token, so computed in chunks of `render_chunk` tokens: exact (refinement attends only
        within one token's 4 sub-frames; the head is per sub-frame token), and the activation peak (the
        refinement SwiGLU and the head's GELU over 4x the tokens) is a chunk's, not the frame's."""
        c = self.config
        Fr, N, d = x.shape
        chunks = [self.render_tokens(t, rope) for t in x.reshape(Fr * N, d).split(self.render_chunk)]
        px = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # [F*N, 4, 768]
        px = px.reshape(Fr, gh, gw, c.time_up, -1).permute(0, 3, 4, 1, 2)  # [F, 4, 768, gh, gw]
        px = F.pixel_shuffle(px.reshape(Fr * c.time_up, -1, gh, gw), c.pixel_patch)
        return px.unflatten(0, (Fr, c.time_up)).transpose(1, 2)

    def render_tokens(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """Tokens [n, d] -> the pixel patches of their 4 sub-frames [n, 4, 3*16*16]."""
        x = self.time_up(x).unflatten(-1, (self.config.time_up, self.config.dim))  # each token -> 4 sub-frames
        for blk in self.refine:  # attention within each token's 4 sub-frames: many tiny sequences, one product
            x = blk(x, rope, rope, backend="short")
        return self.head(x)

    # -- streaming -----------------------------------------------------------------------------------

    def setup_caches(self, batch: int, gh: int, gw: int, dtype=None, device=None):
        """Preallocate one ring buffer per layer and the RoPE tables for a (batch, grid); start a video."""
        c = self.config
        p = next(self.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        N, slots = gh * gw, c.window + 1
        self.caches = [KVCache(batch, c.kv_heads, slots, N, c.head_dim, dtype, device) for _ in self.blocks]
        self.grid, self.batch = (gh, gw), batch
        # Queries sit at time position W; a cached frame of age a at W - a. For each possible current slot,
        # rotations of the whole buffer in slot order, so a step only indexes a table. Built once per grid,
        # in the compute dtype: rotating q and every key window in float32 would be two extra passes a layer.
        self.q_rope = self.grid_rope(gh, gw, torch.full((1,), c.window, device=device), device, dtype)
        slot = torch.arange(slots, device=device)  # all on the device: a CPU tensor copied there would sync
        ages = (slot[:, None] - slot[None, :]) % slots  # [current slot, slot]
        self.k_rope = torch.stack([self.grid_rope(gh, gw, c.window - ages[s], device, dtype) for s in range(slots)])
        self.slot_index = torch.arange(slots * N, device=device).view(slots, N)  # buffer rows of each slot
        self.sub_rope = self.sub_frame_rope(device, dtype)
        self.reset()

    def reset(self):
        """Start a new video. Positions are relative to the window, so a video's absolute start never matters.

        Each video fills the ring from slot 0, so while the window fills the frames seen so far are a prefix
        of the buffer, and that prefix is all a step reads: nothing to clear, and no mask."""
        self.frames_seen = 0

    def step(self, z: torch.Tensor) -> torch.Tensor:
        """One latent frame [B, C, h, w] -> its pixel frames [B, 3, k, H, W] (k = 1 first, then 4)."""
        c = self.config
        slots = c.window + 1
        slot = self.frames_seen % slots  # counted from the video's start: frames 0..W sit in slots 0..W
        if self.frames_seen < c.window:
            # The window is filling: attend to the filled prefix (slots 0..slot) only, a shorter key sequence
            # instead of a mask (a masked call can fall back to a kernel that materializes the scores).
            # Eager: W frames a video, not worth a compiled graph (and its warm-up) per prefix length.
            filled = (slot + 1) * self.slot_index.shape[1]
            px = self.frame(z, self.k_rope[slot, :, :filled], self.slot_index[slot], filled)
        else:
            frame = self.compiled_frame or self.frame
            px = frame(z, self.k_rope[slot], self.slot_index[slot], None)
        if self.frames_seen == 0:  # the lone first latent frame makes one pixel frame: the last sub-frame
            px = px[:, :, -1:]
        self.frames_seen += 1
        return px

    def frame(self, z: torch.Tensor, k_rope: torch.Tensor, index: torch.Tensor, filled: int | None):
        """The per-frame work on tensors only: `step` turns the Python-int state (frames seen, the current
        slot) into the key rotations, the cache rows to write and how many buffer rows hold frames (`filled`;
        None: all of them), so a compiled `frame` is traced once per (batch, grid), never once per frame."""
        x = self.tokens(z)
        for blk, cache in zip(self.blocks, self.caches):
            x = blk(x, self.q_rope, k_rope, None, cache, index, self.backend, filled)
        return self.render(x, *self.grid, self.sub_rope)

    def compile_frame(self) -> None:
        """torch.compile the per-frame work (inference). Inductor keeps compiled graphs in its on-disk cache,
        so a later process with the same model and grid skips most of the warm-up."""
        self.compiled_frame = torch.compile(self.frame, dynamic=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Training: the streaming path unrolled over a clip [B, C, T, h, w] -> [B, 3, 1+4(T-1), H, W]
        (unclamped). Each step's cache update is out of place, so gradients flow through the window."""
        B, C, T, h, w = z.shape
        self.setup_caches(B, h // self.config.patch, w // self.config.patch, dtype=z.dtype, device=z.device)
        px = torch.cat([self.step(z[:, :, t]) for t in range(T)], dim=2)
        self.caches = None  # they hold this clip's graph; the next clip starts fresh anyway
        return px

    # -- whole-sequence reference --------------------------------------------------------------------

    def forward_reference(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T, h, w] -> pixels [B, 3, 1+4(T-1), H, W] in one pass with an explicit mask."""
        c = self.config
        B, C, T, h, w = z.shape
        gh, gw = h // c.patch, w // c.patch
        N = gh * gw
        x = self.tokens(z.transpose(1, 2).reshape(B * T, C, h, w)).reshape(B, T * N, c.dim)
        rope = self.grid_rope(gh, gw, torch.arange(T, device=z.device), z.device)
        frame = torch.arange(T, device=z.device).repeat_interleave(N)
        lag = frame[:, None] - frame[None, :]
        mask = (lag >= 0) & (lag <= c.window)  # block-causal sliding window over latent frames
        for blk in self.blocks:
            x = blk(x, rope, rope, mask, backend=self.backend)
        px = self.render(x.reshape(B * T, N, c.dim), gh, gw, self.sub_frame_rope(z.device)).unflatten(0, (B, T))
        px = px.permute(0, 2, 1, 3, 4, 5).flatten(2, 3)  # [B, T, 3, 4, H, W] -> [B, 3, 4T, H, W]
        return px[:, :, c.time_up - 1 :]  # first latent frame keeps only its last sub-frame


def count_parameters(config: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in FlashDecoder(config).parameters())


def flops_per_latent_frame(c: ModelConfig, gh: int, gw: int, context: int | None = None) -> float:
    """Forward FLOPs (2 x MACs) for one latent frame on a gh x gw token grid that attends to `context`
    frames (itself included; W+1 in steady state, fewer for a video's first W frames)."""
    N, d, hd = gh * gw, c.dim, c.head_dim
    context = c.window + 1 if context is None else context
    block_linear = d * (c.heads + 2 * c.kv_heads) * hd + c.heads * hd * d + 3 * d * 4 * d
    backbone = c.depth * N * (2 * block_linear + 4 * c.heads * hd * context * N)
    up = 2 * N * d * c.time_up * d
    sub = N * c.time_up
    refine = c.refine_depth * sub * (2 * block_linear + 4 * c.heads * hd * c.time_up)
    head = 2 * sub * (d * 4 * d * 2 + d * 3 * c.pixel_patch**2)
    embed = 2 * N * c.in_channels * c.patch**2 * d
    return float(embed + backbone + up + refine + head)


def flops_per_clip(c: ModelConfig, gh: int, gw: int, latent_frames: int) -> float:
    """Forward FLOPs for a whole clip, counting the shorter context of its first W frames."""
    return sum(flops_per_latent_frame(c, gh, gw, min(t, c.window) + 1) for t in range(latent_frames))
