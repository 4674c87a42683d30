"""The first frames and the steady state of one streamed decode: time to first frame, peak memory, host syncs.

    python benchmarks/steady_state.py [--model xl] [--res 720p] [--frames 30] [--dtype bf16] [--device cuda]
                                      [--json steady_state.json]

One warm decoder (random weights), latent frames handed to `Decoder.stream` from the host as a file reader
hands them (a pool of 4 random normalized frames, cycled), every pixel chunk dropped as it comes out:

1. first-frame latency: from the first latent frame into `stream` to its pixel frame ready on the device (CUDA:
   synchronized), on a warm model, median of 5 fresh videos;
2. peak memory: allocated during the first two latent frames (the window still filling) against the steady
   state (frames 3..N) of one video; CUDA `max_memory_allocated` with its peak reset between the two;
3. sync-free steady state (CUDA only): frames 3..N of another video under
   `torch.cuda.set_sync_debug_mode("error")`, so any host-device synchronization on the decode thread (a
   pageable copy, `.item()`, `bool(tensor)`, a synchronize) raises; the first error is reported.

benchmarks/gpu.sh runs it for XL at 720p; benchmarks/targets.py turns its JSON into target rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from flashdecode.bench import parse_resolution
from flashdecode.bench.measure import Clock, MemoryProbe
from flashdecode.bench.report import cpu_model
from flashdecode.engine import load_decoder, resolve_device

FILLING = 2  # latent frames before the steady state: the window (W = 2) fills


def frames_from(pool: torch.Tensor, n: int):
    """n host latent frames [1, C, h, w], cycling the pool (the input does not grow with n)."""
    return (pool[:, :, i % pool.shape[2]] for i in range(n))


def first_frame_ms(decoder, pool: torch.Tensor, device: torch.device, runs: int = 5) -> list[float]:
    """ms from handing the first latent frame to `stream` to its pixels ready, for `runs` fresh videos."""
    out = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        stream = decoder.stream(frames_from(pool, 1))
        chunk = next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - started) * 1e3)
        del chunk
        stream.close()
    return out


def peaks(decoder, pool: torch.Tensor, device: torch.device, n: int) -> dict:
    """Peak memory of the first FILLING latent frames and of the rest, in one video; and the steady ms/frame."""
    probe, result = MemoryProbe(device), {}
    stream = decoder.stream(frames_from(pool, n))
    probe.start()
    for _ in range(FILLING):
        next(stream)
    result["first"] = probe.stop()
    probe.start()
    clock = Clock(device)
    clock.mark()
    for _ in stream:
        clock.mark()
    result["steady"] = probe.stop()
    marks = clock.ms()
    result["steady_ms_per_latent_frame"] = statistics.median(b - a for a, b in zip(marks, marks[1:]))
    return result


def sync_free(decoder, pool: torch.Tensor, device: torch.device, n: int) -> tuple[bool | None, str | None]:
    """(True, None) if frames FILLING+1..n ran with no host sync; (False, the error) if one synced; (None, why)
    where the check does not apply (not CUDA)."""
    if device.type != "cuda":
        return None, "not a CUDA device: torch.cuda.set_sync_debug_mode applies to CUDA only"
    stream = decoder.stream(frames_from(pool, n))
    for _ in range(FILLING):
        next(stream)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(n - FILLING):  # exactly frames FILLING+1..n: not the video's end, whose last checks may wait
            next(stream)
    except RuntimeError as e:
        return False, str(e).strip().splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for _ in stream:  # the end of the video, outside the check
        pass
    torch.cuda.synchronize()
    return True, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xl")
    ap.add_argument("--latent-space", default="wan2.2")
    ap.add_argument("--res", default="720p", help="720p, 480p, 1080p or HxW")
    ap.add_argument("--frames", type=int, default=30, help="latent frames of the video (default 30)")
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda), fp32 (default on cpu), fp16, fp8")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.frames <= FILLING:
        sys.exit(f"error: --frames must be more than {FILLING} (the steady state starts at frame {FILLING + 1})")

    device = resolve_device(args.device)
    label, height, width = parse_resolution(args.res)
    decoder = load_decoder(args.model, args.latent_space, weights="random", device=device, dtype=args.dtype)
    s = decoder.latent_space.spatial
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(1, decoder.latent_space.channels, 4, height // s, width // s, generator=gen)  # on the host
    for _ in decoder.stream(frames_from(pool, FILLING + 1)):  # warm-up: every shape once
        pass

    ttff = first_frame_ms(decoder, pool, device)
    memory = peaks(decoder, pool, device, args.frames)
    ok, why = sync_free(decoder, pool, device, args.frames)
    first, steady = memory["first"]["peak_mem_bytes"], memory["steady"]["peak_mem_bytes"]
    row = dict(model=args.model, latent_space=decoder.latent_space.name, res=label, height=height, width=width,
               latent_frames=args.frames, device=device.type,
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
               torch=torch.__version__, dtype=decoder.precision, random_weights=True,
               ttff_ms=statistics.median(ttff), ttff_runs_ms=ttff,
               ttff_method="first latent frame into Decoder.stream (from the host) -> its pixels ready on the "
                           "device, warm model, median of fresh videos",
               peak_first_two_bytes=first, peak_steady_bytes=steady, peak_first_vs_steady=first / steady,
               mem_before_bytes=memory["first"]["mem_before_bytes"], mem_method=memory["first"]["mem_method"],
               steady_ms_per_latent_frame=memory["steady_ms_per_latent_frame"],
               sync_free=ok, sync_error=why, sync_frames=f"{FILLING + 1}-{args.frames}")
    print(f"{args.model.upper()} {label} {decoder.precision} on {row['device_name']} (random weights):")
    print(f"  first frame {row['ttff_ms']:.1f} ms (warm; runs {', '.join(f'{t:.1f}' for t in ttff)})")
    print(f"  peak {'allocated' if device.type == 'cuda' else 'RSS'}: first {FILLING} frames {first / 2**20:,.0f} MiB,"
          f" steady state {steady / 2**20:,.0f} MiB ({first / steady:.3f}x)")
    print(f"  steady state {row['steady_ms_per_latent_frame']:.1f} ms per latent frame")
    verdict = {True: "pass (no host sync)", False: f"FAIL: {why}", None: f"not checked ({why})"}[ok]
    print(f"  sync-free steady state, frames {row['sync_frames']}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
