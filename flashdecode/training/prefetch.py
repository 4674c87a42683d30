"""Training batches on the device one step ahead, and a guard that turns any host-device sync into an error.

A GPU training step of a small model is short (a few ms at 256x256), so the host must never wait for the
device inside it: a synchronizing copy per batch, or a `.item()`, caps the step rate at the host's pace (issue
17: 2.8 steps/s on an H200). Batches therefore arrive pinned (DataLoader's pin thread, or pinned here), are
copied `non_blocking` on a side stream while the previous step computes, and the compute stream waits on that
copy on the device, not on the host.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from ..staging import copy_on, hand_over


def to_device_ahead(batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield each batch (a tuple of tensors) on `device`; on CUDA, batch k+1 is already being copied when batch
    k is handed out. On other devices a plain `.to(device)` (nothing to overlap with)."""
    if device.type != "cuda":
        for batch in batches:
            yield tuple(t.to(device) for t in batch)
        return
    copy_stream = torch.cuda.Stream(device)

    def stage(batch):
        return tuple(copy_on(copy_stream, t, device) for t in batch)

    it = iter(batches)
    ahead = next(it, None)
    ahead = None if ahead is None else stage(ahead)
    while ahead is not None:
        batch = ahead
        hand_over(copy_stream, batch, device)  # the step waits for its copy on the device, the host does not
        nxt = next(it, None)
        ahead = None if nxt is None else stage(nxt)
        yield batch


def epochs(loader, sampler) -> Iterator:
    """The loader's batches, epoch after epoch (the sampler reshuffled for each), without end."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        epoch += 1
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training loader yields no batch (fewer clips than one batch)")


@contextmanager
def host_syncs_forbidden(enabled: bool, device: torch.device):
    """Inside: torch.cuda.set_sync_debug_mode("error"), so any host-device synchronization (a pageable copy,
    `.item()`, `bool(cuda_tensor)`, a synchronize) raises where it happens. A no-op when not enabled or not CUDA
    (where the host never waits for a device)."""
    if not enabled or device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


__all__ = ["to_device_ahead", "epochs", "host_syncs_forbidden"]
