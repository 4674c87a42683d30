"""Peak memory and speed of the stock Wan VAE decoder, streamed (`--model wan2.x-vae`) vs diffusers' `vae.decode`.

    .venv/bin/python benchmarks/wan_vae_stream.py [--space wan2.1] [--size full|tiny] [--res 64x64]
                                                  [--latent-frames 3,6] [--threads 1] [--json out.json]

Random weights (a conv net's speed and memory do not depend on their values; no Wan weights can be
downloaded here). Each (way, length) runs in a fresh process: `added` is the peak RSS (VmHWM) minus the RSS
once the decoder is loaded, i.e. what decoding the clip took on top of the weights; `ms/latent` is the wall
time per latent frame. Streamed: each latent frame's pixels are dropped as they come (what `flashdecode
decode` does once they are written); diffusers: `vae.decode(z).sample`, the whole clip at once.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def run(space: str, size: str, height: int, width: int, n: int, way: str, threads: int) -> dict:
    """One measurement, in this process."""
    import torch

    from flashdecode.wan_vae import load_baseline

    torch.set_num_threads(threads)
    decoder = load_baseline(space, "cpu", torch.float32, size=size)
    h, w = decoder.latent_grid(height, width)
    z = torch.randn(1, decoder.latent_space.channels, n, h, w, generator=torch.Generator().manual_seed(0))
    loaded = _status_mib("VmRSS")
    start = time.perf_counter()
    if way == "streamed":
        for chunk in decoder.stream(z.unbind(2)):
            del chunk
    else:
        out = decoder.decode_with_diffusers(z)
        del out
    seconds = time.perf_counter() - start
    return dict(way=way, latent_frames=n, frames=1 + 4 * (n - 1), loaded_mib=round(loaded),
                added_mib=round(_status_mib("VmHWM") - loaded), ms_per_latent=round(1e3 * seconds / n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="wan2.1", choices=["wan2.1", "wan2.2"])
    ap.add_argument("--size", default="full", choices=["full", "tiny"], help="the real decoder, or the narrow test one")
    ap.add_argument("--res", default="64x64", help="pixels HxW")
    ap.add_argument("--latent-frames", default="3,6")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement, printed as JSON
    args = ap.parse_args()
    height, width = (int(v) for v in args.res.split("x"))
    if args.one:
        way, n = args.one.split(":")
        print(json.dumps(run(args.space, args.size, height, width, int(n), way, args.threads)))
        return
    rows = []
    for n in (int(v) for v in args.latent_frames.split(",")):
        for way in ("streamed", "diffusers"):
            out = subprocess.run([sys.executable, __file__, "--space", args.space, "--size", args.size, "--res",
                                  args.res, "--threads", str(args.threads), "--one", f"{way}:{n}"],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{args.space}-vae ({args.size}, random weights) {args.res} {r['latent_frames']:>3} latent frames "
                  f"({r['frames']} px frames) {way:>9}: +{r['added_mib']} MiB over the loaded "
                  f"{r['loaded_mib']} MiB, {r['ms_per_latent']} ms/latent frame", flush=True)
    if args.json:
        import os
        import platform

        import torch

        machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                       load_average=os.getloadavg()[0])  # a shared machine's other jobs slow every row alike
        with open(args.json, "w") as f:
            json.dump(dict(space=args.space, size=args.size, res=args.res, threads=args.threads, machine=machine,
                           random_weights=True, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
