"""ms per latent frame of FlashDecoder-S on the CPU: streaming (ring-buffer KV cache) vs the masked reference.

    .venv/bin/python benchmarks/stream_vs_reference.py [--res 128x128] [--latent-frames 8] [--repeat 5] [--threads N]

Both compute the same function (tests hold them equal); streaming does W+1 frames of attention per frame,
the reference attends over the whole clip under a mask, so its cost per frame grows with the clip.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import flashdecode


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="s")
    ap.add_argument("--res", default="128x128", help="pixels, multiples of 16")
    ap.add_argument("--latent-frames", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    height, width = (int(v) for v in args.res.split("x"))
    decoder = flashdecode.load_decoder(args.model, "wan2.2", weights="random", device="cpu", dtype="float32")
    latents = torch.randn(1, 48, args.latent_frames, height // 16, width // 16, generator=torch.Generator().manual_seed(0))
    n = args.latent_frames

    def stream():
        for chunk in decoder.stream(latents[:, :, t] for t in range(n)):
            del chunk

    stream_ms = median_ms(stream, args.repeat) / n
    reference_ms = median_ms(lambda: decoder.decode_reference(latents), args.repeat) / n
    print(f"FlashDecoder-{args.model.upper()} (random weights), {height}x{width}, {n} latent frames, cpu float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"  streaming  {stream_ms:8.1f} ms per latent frame")
    print(f"  reference  {reference_ms:8.1f} ms per latent frame (masked whole-sequence pass)")


if __name__ == "__main__":
    main()
