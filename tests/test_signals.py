"""Stopping a decode at any moment leaves a playable file: SIGINT/SIGTERM/SIGHUP flush it, SIGKILL loses at most
the last unflushed second (fragmented MP4). Tiny model, random weights, a 64x64 grid: plumbing, not pixels.

The 20-signal campaign is `-m slow` (about 5 s a run on a 2-core machine); one SIGKILL case runs by default.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading

import av
import numpy as np
import pytest

TINY = ["--model", "tiny", "--weights", "random"]
LATENT_FRAMES = 40  # 157 frames, about 10 s of video at 16 fps
FPS = 16
# What may be missing after SIGKILL: the unflushed fragment (1 s), the writer queue (4 chunks of 4 frames) and
# x264's frame threads, 1.5 per core (ultrafast: no lookahead). Measured on a 2-core machine: 13 frames lost.
SIGKILL_SLACK = FPS + 16 + int(1.5 * (os.cpu_count() or 1)) + 8


def frames_in(path) -> int:
    """Frames PyAV decodes from the whole file; raises if the file is not a readable video."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def start_decode(tmp_path, out):
    z = tmp_path / "z.npy"
    if not z.exists():
        np.save(z, np.random.default_rng(0).standard_normal((1, 16, LATENT_FRAMES, 8, 8)).astype(np.float32))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASHDECODE_PROGRESS_EVERY": "0"}
    return subprocess.Popen([sys.executable, "-m", "flashdecode", "decode", str(z), "-o", str(out), *TINY,
                             "--fps", str(FPS), "--preset", "ultrafast", "--json", str(tmp_path / "s.json")],
                            env=env, stderr=subprocess.PIPE)


def stop_after(dec, latent_frames: int, sig: int) -> tuple[int, str]:
    """Send `sig` once the decoder reports `latent_frames` decoded; return (pixel frames decoded then, stderr)."""
    lines, at = [], {}
    reached = threading.Event()

    def read():
        for line in dec.stderr:
            lines.append(line.decode())
            m = re.match(rb"decode: (\d+)/\d+ latent frames, (\d+) frames", line)
            if m and int(m.group(1)) >= latent_frames and not reached.is_set():
                at["frames"] = int(m.group(2))
                reached.set()
                dec.send_signal(sig)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        dec.wait(120)
    finally:
        dec.kill()
    reader.join(5)
    return at.get("frames", -1), "".join(lines)


EXPECTED = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated"), signal.SIGHUP: (129, "hangup")}


def check_stop(tmp_path, sig: int, latent_frames: int) -> None:
    out = tmp_path / "v.mp4"
    for p in (out, tmp_path / "s.json"):
        p.unlink(missing_ok=True)
    dec = start_decode(tmp_path, out)
    decoded, err = stop_after(dec, latent_frames, sig)
    assert "Traceback" not in err, err
    if decoded < 0:  # the decode finished before the signal: a complete file
        assert dec.returncode == 0 and frames_in(out) == 1 + 4 * (LATENT_FRAMES - 1), err
        return
    if sig == signal.SIGKILL:
        assert dec.returncode == -signal.SIGKILL
        n = frames_in(out) if out.exists() else 0
        assert n >= decoded - SIGKILL_SLACK, (n, decoded)
        return
    code, status = EXPECTED[sig]
    assert dec.returncode == code, err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == status and s["frames"] >= decoded - 4, (s, decoded)
    assert frames_in(out) == s["frames"]  # everything the JSON reports is in a finished, playable file


def test_sigkill_mid_decode_loses_at_most_the_last_second(tmp_path):
    check_stop(tmp_path, signal.SIGKILL, 24)


@pytest.mark.slow
def test_twenty_random_signals(tmp_path):
    rng = random.Random(1234)
    for i in range(20):
        sig = rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGHUP])
        latent_frames = rng.randint(1, LATENT_FRAMES - 1)
        try:
            check_stop(tmp_path, sig, latent_frames)
        except AssertionError as e:
            raise AssertionError(f"run {i}: {signal.Signals(sig).name} after {latent_frames} latent frames: {e}") from e


@pytest.mark.parametrize("name", ["v.mp4", pytest.param("v.mov", marks=pytest.mark.slow)])
def test_sigkill_during_a_stall_keeps_every_frame_decoded_a_second_earlier(tmp_path, name):
    """A live producer sends 6 latent frames and stalls. Frames wait in x264's look-ahead and in the muxer's open
    fragment; after a second without input the writer ends the segment, so a kill 3 s into the stall finds all
    21 frames on disk, in a file that plays."""
    from test_cli_decode import producer

    out = tmp_path / name
    prod = producer(6, 12, tmp_path / "never")  # 6 latent frames, then nothing until the test ends
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASHDECODE_PROGRESS_EVERY": "0"}
    dec = subprocess.Popen([sys.executable, "-m", "flashdecode", "decode", "-", "-o", str(out), *TINY, "--fps",
                            str(FPS)], stdin=prod.stdout, stderr=subprocess.PIPE, env=env)
    prod.stdout.close()
    try:
        for line in dec.stderr:
            if line.startswith(b"decode: 6 latent frames"):
                break
        threading.Event().wait(3)
        dec.kill()
        assert dec.wait(30) == -signal.SIGKILL
    finally:
        prod.kill()
        dec.kill()
    assert frames_in(out) == 1 + 4 * 5
