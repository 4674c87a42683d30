"""Latent frames onto the decoding device without the decode thread ever waiting for the GPU.

A pageable host tensor copied to a GPU (`z.to("cuda")`) is a copy plus a stream synchronize, and
`bool(torch.isfinite(z).all())` on a GPU tensor waits for every kernel queued before it: either, once a frame,
keeps the host from running ahead of the GPU, so the GPU idles between frames. Here:

- host latents are checked for NaN/Inf on the host (`Decoder.check`: they are there anyway), copied into pinned memory
  (PyTorch's caching host allocator: a block is reused only once the copy reading it has finished) and sent
  `non_blocking` on a side stream, so the copy of the next frame overlaps the current frame's compute;
- latents already on the GPU are checked there: the verdict is copied to a pinned flag, read once the
  GPU has produced it (at the next chunk), and waited for only at the end of the video.
"""
from __future__ import annotations

from collections import deque

import torch

from .errors import FlashdecodeError

NOT_FINITE = "latents contain NaN or Inf values; check the diffusion run that made them"


def require_finite(z: torch.Tensor) -> None:
    """One FlashdecodeError sentence for NaN/Inf latents (a host sync for a device tensor: use `Stager`)."""
    if not bool(torch.isfinite(z).all()):  # NaN in, NaN video out: say so instead
        raise FlashdecodeError(NOT_FINITE)


def copy_on(stream: torch.cuda.Stream, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` sent to `device` on the side `stream`, from pinned memory (pinned here if it is not), `non_blocking`:
    the copy overlaps whatever the compute stream has queued, and the host does not wait for it."""
    with torch.cuda.stream(stream):
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def hand_over(stream: torch.cuda.Stream, tensors, device: torch.device) -> None:
    """Give `tensors`, copied on `stream` (`copy_on`), to the compute stream of `device`: it waits for the copies
    on the device (the host does not), and their memory is not reused by `stream` while compute still reads it."""
    compute = torch.cuda.current_stream(device)
    compute.wait_stream(stream)
    for t in tensors:
        t.record_stream(compute)


class Stager:
    """Latent chunks -> the same chunks on `device`, checked for NaN/Inf, with no host sync on CUDA."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.copies = torch.cuda.Stream(self.device)
            self.verdicts: deque = deque()  # (pinned bool flag, event) per device chunk, oldest first

    def to_device(self, z: torch.Tensor) -> torch.Tensor:
        """`z` on the device. Host latents must have been checked already (`Decoder.check` does, on the host);
        GPU latents are checked here."""
        if z.device.type != "cuda":
            return self._upload(z) if self.cuda else z.to(self.device)
        if self.cuda:
            self._check_on_device(z)
            return z.to(self.device)  # another GPU: a device-to-device copy, ordered on the stream
        z = z.to(self.device)  # a GPU tensor for a decoder on the host: the copy waits anyway
        require_finite(z)
        return z

    def poll(self) -> None:
        """Raise for a device chunk found not finite, among those whose verdict the GPU has produced."""
        while self.cuda and self.verdicts and self.verdicts[0][1].query():
            self._read_verdict()

    def finish(self) -> None:
        """The end of a video: wait for the last verdicts (one wait per video, not per frame)."""
        while self.cuda and self.verdicts:
            self.verdicts[0][1].synchronize()
            self._read_verdict()

    def _upload(self, z: torch.Tensor) -> torch.Tensor:
        z = copy_on(self.copies, z, self.device)  # overlaps the frames already queued on the compute stream
        hand_over(self.copies, (z,), self.device)
        return z

    def _check_on_device(self, z: torch.Tensor) -> None:
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(torch.isfinite(z).all(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(z.device))
        self.verdicts.append((flag, done))

    def _read_verdict(self) -> None:
        flag, _ = self.verdicts.popleft()
        if not flag.item():  # a host tensor: no device sync
            self.verdicts.clear()
            raise FlashdecodeError(NOT_FINITE)
