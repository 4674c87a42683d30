"""Memory: refuse work that cannot fit, before allocating it.

Each decoder family estimates its own peak (`decoder.estimate_memory`, upper-leaning); `available_memory` reads what is free
(or $FLASHDECODE_AVAILABLE_MEMORY); `check_memory` raises one FlashdecodeError line when a decode will not
fit, and `check_host_memory` does the same for any size a file, a stream or an option claims (checked
before the allocation, so a 20-byte file that claims a petabyte costs nothing).
"""
from __future__ import annotations

import os
import re

from .errors import FlashdecodeError
from .progress import format_bytes

MEMORY_ENV = "FLASHDECODE_AVAILABLE_MEMORY"  # bytes (or 512M / 4G) to assume free instead of measuring


def _parse_bytes(text: str) -> int:
    """'8G' / '512M' / '1.5g' / '1073741824' -> bytes; anything else is one line naming the variable."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    value = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ") if m else float("nan")
    if not value < 2 ** 63:  # not a number, or more digits than a float holds (inf)
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise FlashdecodeError(f"{MEMORY_ENV}={shown!r} is not a size; write bytes or a size like 512M, 8G, 1.5T "
                               f"(or unset it to measure the free memory)")
    return int(value)


def available_memory(device="cpu") -> int | None:
    """Free bytes for the work: free GPU memory plus torch's cached blocks, or on the CPU MemAvailable (capped by
    a container's memory limit)."""
    if os.environ.get(MEMORY_ENV):
        return _parse_bytes(os.environ[MEMORY_ENV])
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None  # not Linux: no check
    in_cgroup = cgroup_free_memory()
    return free if in_cgroup is None else min(free, in_cgroup)


CGROUP_ROOT = "/sys/fs/cgroup"
# (limit, usage, the memory.stat key of reclaimable page cache) for cgroup v2, then v1
CGROUP_FILES = (("memory.max", "memory.current", "inactive_file"),
                ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"))


def cgroup_free_memory(root: str | None = None) -> int | None:
    """What the container's memory limit (docker --memory, a Kubernetes limit, systemd MemoryMax) still allows:
    limit - (usage - inactive page cache), the working set the OOM killer counts. MemAvailable shows the host's
    memory and would let a container take a size that gets it killed. None when there is no limit."""
    root = root or CGROUP_ROOT
    for limit_name, usage_name, cache_key in CGROUP_FILES:
        try:
            with open(os.path.join(root, limit_name)) as f:
                limit = f.read().strip()
            with open(os.path.join(root, usage_name)) as f:
                usage = int(f.read())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # v1 writes "no limit" as ~2^63
            return None
        cache = 0
        try:
            with open(os.path.join(root, os.path.dirname(limit_name), "memory.stat")) as f:
                stat = dict(line.split() for line in f if len(line.split()) == 2)
            cache = int(stat.get(cache_key, 0))
        except (OSError, ValueError):
            pass
        return max(0, int(limit) - max(0, usage - cache))
    return None


def check_memory(decoder, batch: int, h: int, w: int, output_bytes: int = 0) -> None:
    """One line when decoding a batch on an h x w grid will not fit; `output_bytes`: a whole video kept in memory
    on the decoder's device too (the diffusers adapter returns one)."""
    need = dict(decoder.estimate_memory(batch, h, w))
    need["total"] += output_bytes
    free = available_memory(decoder.device)
    if free is None:
        return
    resident = need["weights"] if not os.environ.get(MEMORY_ENV) else 0  # already loaded, so not in `free`
    if need["total"] - resident > free:
        H, W = decoder.pixel_size(h, w)
        fix = "decode one item with --batch-index, " if batch > 1 else ""
        raise FlashdecodeError(
            f"decoding a {h}x{w} latent grid ({W}x{H} px, batch {batch}) with model {decoder.name!r} needs about "
            f"{format_bytes(need['total'])} on {decoder.device} but only {format_bytes(free + resident)} is available; "
            f"{fix}use a smaller --model or lower resolution, or another --device")


def check_host_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse to allocate `nbytes` of host memory for `what` when that much is not free (one line, with a fix)."""
    free = available_memory("cpu")
    if free is not None and nbytes > free:
        raise FlashdecodeError(f"{what} needs about {format_bytes(nbytes)} of memory but only {format_bytes(free)} is "
                               f"available; {fix}")


# Bytes per output pixel alive while one 4-frame chunk is encoded (upper-leaning): the float32 chunk and its
# crop/resize copies; the Wan VAE's conv encoder also keeps ~96-160 channel full-resolution features (and a
# 2-frame causal cache) alive, which dominates.
ENCODE_BYTES_PER_PIXEL = {"demo": 4 * 3 * 4 * 6, "wan": 160 * 6 * 4 * 2}


def estimate_encode_memory(teacher: str, h: int, w: int, frames: int, source_hw: tuple[int, int]) -> int:
    """Rough peak bytes of `flashdecode encode` at h x w: one chunk through the teacher, the source frames it
    is cut from (uint8 + float copies), and the latents kept for a file output (48 channels at 1/16, float32, x2)."""
    per_pixel = ENCODE_BYTES_PER_PIXEL["wan" if teacher.startswith("wan") else "demo"]
    source = 4 * 3 * source_hw[0] * source_hw[1] * 9
    latents = 2 * 4 * 48 * (1 + (frames - 1) // 4) * (h // 16) * (w // 16)
    return h * w * per_pixel + source + latents


def check_encode_memory(teacher: str, h: int, w: int, frames: int, device, source_hw: tuple[int, int]) -> None:
    need = estimate_encode_memory(teacher, h, w, frames, source_hw)
    free = available_memory(device)
    if free is not None and need > free:
        raise FlashdecodeError(f"encoding {frames} frames at {h}x{w} (HxW) with the {teacher} teacher needs about "
                               f"{format_bytes(need)} on {device} but only {format_bytes(free)} is available; "
                               "pass a smaller --size (or fewer --frames)")
