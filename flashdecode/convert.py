"""Decoded pixels -> uint8 frames for the writers, converted where the pixels are, then copied to the host.

Video encoders take YUV 4:2:0 (BT.709, limited "tv" range, chroma the average of each 2x2 block), so the
conversion runs here, on the GPU, and the encoder thread runs no swscale; PNG, y4m and raw take rgb24. One
frame of I420 is H*W*3/2 bytes, Y plane then U then V: what `av.VideoFrame.from_ndarray(a, "yuv420p")` takes
as an [H*3/2, W] array.

On CUDA, `HostCopies` copies each converted chunk into a small ring of pinned host buffers on a side stream
and hands the writer an event to wait on, so the decode loop never waits on a copy; a slot is reused only
once every writer has encoded it. On the CPU the same code runs, converting on the CPU, with no copy at all.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch
import torch.nn.functional as F

KR, KB = 0.2126, 0.0722  # BT.709 luma weights of red and blue
KG = 1 - KR - KB
FORMATS = ("rgb24", "yuv420p")


def _unit(pixels: torch.Tensor) -> torch.Tensor:
    """Model output ([-1, 1] nominal, any float dtype, maybe past the range) -> float32 in [0, 1]."""
    return pixels.float().clamp(-1, 1).add_(1).mul_(0.5)


def to_rgb24(pixels: torch.Tensor) -> torch.Tensor:
    """[B,3,k,H,W] -> uint8 [B,k,H,W,3] on the same device."""
    return _unit(pixels).mul_(255).round_().to(torch.uint8).movedim(1, -1).contiguous()


def to_i420(pixels: torch.Tensor) -> torch.Tensor:
    """[B,3,k,H,W] (H, W even) -> uint8 [B,k,H*W*3/2]: BT.709 limited-range Y, then 2x2-averaged U and V.

    No float32 copy of the frame: it is clamped in the model's own dtype, Y is accumulated into one float32
    plane and stored, and the chroma is computed on float32 2x2 sums, a quarter of the pixels. Only Python
    scalars weight the planes, so no constant tensor crosses to the device (a pageable copy would be a host
    sync per chunk). Values are offset by 0.5 so the uint8 store's truncation rounds.
    """
    B, _, k, H, W = pixels.shape
    if H % 2 or W % 2:
        raise ValueError(f"YUV 4:2:0 needs an even frame size, got {W}x{H}")
    x = pixels.clamp(-1, 1)  # [-1, 1]: Y = 16 + 219 (Kr R + Kg G + Kb B) with R = (r + 1) / 2
    out = torch.empty(B, k, H * W * 3 // 2, dtype=torch.uint8, device=pixels.device)
    # chroma first, on 2x2 block averages (chroma siting: the block centre), in float32 either way: a float32
    # frame is pooled as it is; a bf16 one is summed into float32 as it is read, without a float32 copy
    if x.dtype == torch.float32:
        pooled = F.avg_pool2d(x.reshape(B * 3, k, H, W), 2).view(B, 3, k, H // 2, W // 2)
    else:
        pooled = x.reshape(B, 3, k, H // 2, 2, W // 2, 2).sum((4, 6), dtype=torch.float32).mul_(0.25)
    r2, g2, b2 = pooled.unbind(1)
    r, g, b = x.unbind(1)
    y = r.float()  # a float32 x's own red plane, which nothing reads any more; else one float32 plane
    y.mul_(KR * 219 / 2).add_(g, alpha=KG * 219 / 2).add_(b, alpha=KB * 219 / 2).add_(16 + 219 / 2 + 0.5)
    out[..., :H * W].view(B, k, H, W).copy_(y)
    y2 = KR * r2 + KG * g2 + KB * b2
    q = H * W // 4
    u = (b2 - y2).mul_(224 / 2 / (2 * (1 - KB))).add_(128.5)
    v = (r2 - y2).mul_(224 / 2 / (2 * (1 - KR))).add_(128.5)
    out[..., H * W:H * W + q].view(B, k, H // 2, W // 2).copy_(u.clamp_(0, 255))
    out[..., H * W + q:].view(B, k, H // 2, W // 2).copy_(v.clamp_(0, 255))
    return out


def convert(pixels: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "yuv420p":
        return to_i420(pixels)
    if fmt == "rgb24":
        return to_rgb24(pixels)
    raise ValueError(f"unknown pixel format {fmt!r}; choose {', '.join(FORMATS)}")


def rgb24_to_i420(frames: np.ndarray) -> np.ndarray:
    """uint8 [k,H,W,3] -> [k,H*3/2,W] I420 with the same BT.709 mapping (for rgb24 handed to a video writer)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float().div_(127.5).sub_(1)
    k, H, W = frames.shape[:3]
    return to_i420(x)[0].view(k, H * 3 // 2, W).numpy()


def frame_shape(fmt: str, H: int, W: int) -> tuple[int, ...]:
    """The numpy shape of one frame as the writers take it."""
    return (H * 3 // 2, W) if fmt == "yuv420p" else (H, W, 3)


class _Slot:
    """One pinned host buffer, its copy-done event, and how many writers still have to read it."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None
        self.event = None
        self.readers = 0


class HostCopies:
    """Converted chunks [B,k,...] uint8 on the device -> numpy arrays on the host, without blocking on CUDA.

    `to_host(t, readers)` returns (array, ready, done): the writer thread calls `ready()` before reading
    the array and `done()` once it no longer needs it. With every slot in use, `to_host` waits for one
    (back-pressure, as the writers' queues give).
    """

    def __init__(self, device: torch.device, slots: int = 6):
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            self.device = torch.device(device)
            self.side = torch.cuda.Stream(self.device)
            self.slots = [_Slot() for _ in range(slots)]
            self.free: queue.Queue = queue.Queue()
            self.lock = threading.Lock()
            for i in range(slots):
                self.free.put(i)

    def to_host(self, t: torch.Tensor, readers: int = 1):
        if not self.cuda:  # already in host memory: no copy, nothing to wait for
            return t.numpy(), _nothing, _nothing
        index = self.free.get()
        slot = self.slots[index]
        if slot.buffer is None or slot.buffer.numel() < t.numel():
            slot.buffer = torch.empty(t.numel(), dtype=torch.uint8, pin_memory=True)
        host = slot.buffer[:t.numel()].view(t.shape)
        self.side.wait_stream(torch.cuda.current_stream(self.device))  # the conversion has run
        with torch.cuda.stream(self.side):
            host.copy_(t, non_blocking=True)
            slot.event = torch.cuda.Event()
            slot.event.record(self.side)
        t.record_stream(self.side)  # keep the device tensor alive until the copy is done
        slot.readers = readers

        def done():
            with self.lock:  # each batch item has its own writer thread: the last one frees the slot
                slot.readers -= 1
                last = slot.readers == 0
            if last:
                self.free.put(index)

        return host.numpy(), slot.event.synchronize, done


def _nothing() -> None:
    pass
