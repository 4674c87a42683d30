"""Soak: 10,000 latent frames through `flashdecode decode` from a live NPY stream on stdin to an MP4.

Checks what must hold however long a video is: the decoder's resident memory is flat (RSS at the last latent
frame <= 1.05x RSS at the 1,000th), and the output is one complete, playable file that PyAV and a real ffmpeg
binary (imageio-ffmpeg's) both decode in full, every frame. Tiny model, random weights, a small grid: this
measures the pipeline (reading, decoding, converting, encoding, writing), not the pixels.

    python benchmarks/soak.py                      # 10,000 latent frames, 8x8 latent grid (64x64 pixels)
    python benchmarks/soak.py --latent-frames 2000 --json soak.json

Prints one JSON object (and writes it to --json): RSS samples, ratio, frames found by each reader, timings.
Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRODUCER = """
import sys, numpy as np
n, c, g = map(int, sys.argv[1:4])
rng = np.random.default_rng(0)
out = sys.stdout.buffer
for i in range(n):
    np.save(out, rng.standard_normal((c, g, g)).astype(np.float32))
out.flush()
"""


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-frames", type=int, default=10_000)
    ap.add_argument("--grid", type=int, default=8, help="latent grid side (8 -> 64x64 pixels for wan2.1)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--first", type=int, default=1000, help="latent frame of the reference RSS sample")
    ap.add_argument("--out", default=None, help="output MP4 (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    out = Path(args.out or Path(tempfile.mkdtemp(prefix="flashdecode-soak-")) / "soak.mp4")
    env = {**os.environ, "FLASHDECODE_PROGRESS_EVERY": "0", "PYTHONUNBUFFERED": "1"}
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(args.latent_frames), "16", str(args.grid)],
                                stdout=subprocess.PIPE)
    decoder = subprocess.Popen([sys.executable, "-m", "flashdecode", "decode", "-", "-o", str(out), "--model",
                                args.model, "--weights", "random", "--latent-space", "wan2.1",
                                "--json", str(out.with_suffix(".json"))],
                               stdin=producer.stdout, stderr=subprocess.PIPE, env=env)
    producer.stdout.close()
    samples: dict[int, int] = {}  # latent frames decoded -> RSS then
    marks = sorted({args.first, *range(0, args.latent_frames + 1, max(1, args.latent_frames // 10))} - {0})
    tail: list[str] = []

    def watch():
        for line in decoder.stderr:
            m = re.match(rb"decode: (\d+)/?\d* latent frames", line)
            if m and int(m.group(1)) in marks:
                try:
                    samples[int(m.group(1))] = rss_bytes(decoder.pid)
                except OSError:
                    pass
            elif not m:
                tail.append(line.decode(errors="replace"))

    t0 = time.perf_counter()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = decoder.wait()
    watcher.join(10)
    producer.wait(10)
    seconds = time.perf_counter() - t0
    expected = 1 + 4 * (args.latent_frames - 1)

    import av

    t1 = time.perf_counter()
    with av.open(str(out)) as c:
        pyav_frames = sum(1 for _ in c.decode(video=0))
    pyav_s = time.perf_counter() - t1
    try:
        import imageio_ffmpeg

        ff = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(out), "-map", "0:v",
                             "-f", "framecrc", "-"], capture_output=True, text=True)
        ffmpeg_frames = sum(1 for ln in ff.stdout.splitlines() if ln.startswith("0,"))
        ffmpeg_errors = ff.stderr.strip()
    except ImportError:
        ffmpeg_frames, ffmpeg_errors = None, "imageio-ffmpeg not installed"

    first, last = samples.get(args.first), samples.get(args.latent_frames)
    result = {
        "latent_frames": args.latent_frames, "grid": args.grid, "model": args.model, "random_weights": True,
        "exit_code": code, "seconds": round(seconds, 1), "latent_fps": round(args.latent_frames / seconds, 2),
        "expected_frames": expected, "pyav_frames": pyav_frames, "pyav_decode_s": round(pyav_s, 1),
        "ffmpeg_frames": ffmpeg_frames, "ffmpeg_errors": ffmpeg_errors, "output_bytes": out.stat().st_size,
        "rss_mib": {k: round(v / 2 ** 20, 1) for k, v in sorted(samples.items())},
        "rss_ratio_last_vs_first": round(last / first, 4) if first and last else None,
        "summary": json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None,
        "stderr_tail": tail[-5:],
    }
    ffmpeg_ok = ffmpeg_frames is None or (ffmpeg_frames == expected and not ffmpeg_errors)
    ratio = result["rss_ratio_last_vs_first"]
    ok = code == 0 and pyav_frames == expected and ffmpeg_ok and ratio is not None and ratio <= 1.05
    result["ok"] = bool(ok)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
