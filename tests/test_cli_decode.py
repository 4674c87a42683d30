"""`flashdecode decode` / `info` end to end: real latents to MP4/PNG/y4m, live pipes, Ctrl-C, and every error.

Tiny model with random weights throughout: these tests are about the plumbing, not the pixels.
"""
import io
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flashdecode.cli import app
from flashdecode.cli.common import run_guarded
from flashdecode.errors import FlashdecodeError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "latents" / "wan21_t2v_320x512_16lat.safetensors"
needs_real = pytest.mark.skipif(not REAL.exists(), reason=f"real latents {REAL} not found (CI keeps shared/ beside "
                                "the clone)")
CROP = Path(__file__).parent / "data" / "wan21_crop_3lat_8x8.safetensors"  # real Wan2.1 latents, 8x8 grid
TINY = ["--model", "tiny", "--weights", "random"]
runner = CliRunner()


def cli(*args, **kw):
    """The real command in a real process (pipes, signals, stdout)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "flashdecode", *args], capture_output=True, env=env, timeout=120, **kw)


def popen(*args, **kw):
    env = {**os.environ, **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "flashdecode", *args], env=env, **kw)


def count_frames(src, **kw):
    with av.open(src, **kw) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(video=0))
        return n, s.codec_context.width, s.codec_context.height


def npy_stream(*arrays) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a)
    return buf.getvalue()


def frame(seed=0, c=16, h=8, w=8):
    return np.random.default_rng(seed).standard_normal((c, h, w)).astype(np.float32)


# A producer: writes `first` latent frames, waits until `gate` exists (or times out: exit 3), writes the rest.
PRODUCER = """
import sys, time, os, glob, numpy as np
first, total, gate = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out = sys.stdout.buffer
for i in range(total):
    if i == first:
        t = time.time()
        while not glob.glob(gate):
            if time.time() - t > 60:
                sys.exit(3)
            time.sleep(0.05)
    np.save(out, np.random.default_rng(i).standard_normal((16, 8, 8)).astype(np.float32))
    out.flush()
"""


def producer(first, total, gate):
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(first), str(total), str(gate)], stdout=subprocess.PIPE)


# -- real latents: the acceptance outputs ---------------------------------------------------------------

@needs_real
def test_real_latents_to_mp4_with_json(tmp_path):
    out, summary = tmp_path / "wan.mp4", tmp_path / "run.json"
    r = cli("decode", str(REAL), "-o", str(out), *TINY, "--json", str(summary))
    assert r.returncode == 0, r.stderr.decode()
    assert count_frames(str(out)) == (61, 512, 320)
    s = json.loads(summary.read_text())
    assert (s["frames"], s["width"], s["height"], s["fps"], s["model"], s["device"]) == (61, 512, 320, 16.0, "tiny", "cpu")
    assert s["latent_frames"] == 16 and s["random_weights"] is True and s["peak_mem_bytes"] > 0 and s["decode_fps"] > 0
    err = r.stderr.decode()
    assert "weights are random" in err and "decoded 61 frames from 16 latent frames" in err
    assert "Traceback" not in err


@needs_real
def test_real_latents_to_png_sequence(tmp_path):
    r = runner.invoke(app, ["decode", str(REAL), "-o", str(tmp_path / "frames"), *TINY, "--quiet"])
    assert r.exit_code == 0, r.stderr
    pngs = sorted((tmp_path / "frames").iterdir())
    assert len(pngs) == 61 and pngs[0].name == "00000.png"
    assert count_frames(str(pngs[-1])) == (1, 512, 320)
    assert r.stderr.strip().startswith("note: the weights are random")  # --quiet: no progress, no summary


@needs_real
def test_real_latents_y4m_on_stdout(tmp_path):
    r = cli("decode", str(REAL), "-o", "-", *TINY, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"YUV4MPEG2 W512 H320 F16:1")
    assert count_frames(io.BytesIO(r.stdout), format="yuv4mpegpipe") == (61, 512, 320)


# -- pipes: decoding starts before the producer has finished ----------------------------------------------

def test_pipeline_png_appears_before_producer_finishes(tmp_path):
    out = tmp_path / "frames"
    prod = producer(2, 4, out / "00000.png")  # holds back frames 2-3 until the first PNG exists
    dec = popen("decode", "-", "-o", str(out), *TINY, "--quiet", stdin=prod.stdout, stderr=subprocess.PIPE)
    prod.stdout.close()
    assert prod.wait(90) == 0, "the first frame was not written while the producer was still running"
    _, err = dec.communicate(timeout=90)
    assert dec.returncode == 0, err.decode()
    assert len(list(out.iterdir())) == 1 + 4 * 3


def test_pipeline_y4m_bytes_flow_before_producer_finishes(tmp_path):
    gate = tmp_path / "go"
    prod = producer(2, 4, gate)
    dec = popen("decode", "-", "-o", "-", *TINY, "--quiet", stdin=prod.stdout, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    prod.stdout.close()
    data = b""
    deadline = time.time() + 90
    while b"FRAME" not in data:  # the header and the first frame arrive while the producer waits on the gate
        assert time.time() < deadline and prod.poll() is None
        if select.select([dec.stdout], [], [], 0.5)[0]:
            data += os.read(dec.stdout.fileno(), 1 << 16)
    gate.touch()
    rest, err = dec.communicate(timeout=90)
    assert dec.returncode == 0 and prod.wait(10) == 0, err.decode()
    assert count_frames(io.BytesIO(data + rest), format="yuv4mpegpipe") == (13, 64, 64)


@pytest.mark.parametrize("sig, code, status", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
                                              (signal.SIGHUP, 129, "hangup")])
def test_signal_leaves_playable_mp4(tmp_path, sig, code, status):
    """Ctrl-C, SIGTERM (timeout, docker, systemd) and SIGHUP all flush: a finished MP4 and a truthful --json."""
    out = tmp_path / "cut.mp4"
    prod = producer(3, 6, tmp_path / "never")  # 3 frames, then it stalls
    dec = popen("decode", "-", "-o", str(out), *TINY, "--json", str(tmp_path / "s.json"), stdin=prod.stdout,
                stderr=subprocess.PIPE, env={"FLASHDECODE_PROGRESS_EVERY": "0"})
    prod.stdout.close()
    lines = []
    seen3 = threading.Event()

    def read_stderr():
        for line in dec.stderr:
            lines.append(line.decode())
            if line.startswith(b"decode: 3 latent frames"):
                seen3.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert seen3.wait(90), "".join(lines)
        dec.send_signal(sig)
        assert dec.wait(30) == code
    finally:
        prod.kill()
        dec.kill()
    reader.join(5)
    err = "".join(lines)
    assert f"{status} after 9 frames" in err and "holds 9 frames" in err and "Traceback" not in err, err
    assert err.rstrip().endswith(status)
    assert count_frames(str(out)) == (9, 64, 64)  # 1 + 4 + 4 frames, a finished, playable MP4
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["status"], s["frames"], s["latent_frames"]) == (status, 9, 3)


def _limit_file_size(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG (kept across exec)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.parametrize("name", ["v.mp4", "v.mkv"])
def test_file_size_limit_one_line_playable_file_truthful_json(tmp_path, name):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((1, 16, 30, 8, 8)).astype(np.float32))
    out, summary = tmp_path / name, tmp_path / "s.json"
    r = cli("decode", str(tmp_path / "z.npy"), "-o", str(out), *TINY, "--json", str(summary), "--quiet",
            preexec_fn=_limit_file_size(10_000))
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "File too large (disk full or file-size limit)" in errors[0], err
    s = json.loads(summary.read_text())
    assert s["status"] == "error" and 0 < s["frames"] < 117
    assert count_frames(str(out))[0] == s["frames"]  # the JSON tells what a player finds


def test_decode_file_api(tmp_path):
    """The library entry point the CLI is a layer over: one call, the --json summary back."""
    import flashdecode

    seen = []
    summary = flashdecode.decode_file(CROP, tmp_path / "v.mp4", model="tiny", weights="random", preset="ultrafast",
                                      json_path=tmp_path / "s.json", progress=lambda lat, pix: seen.append((lat, pix)))
    assert summary == json.loads((tmp_path / "s.json").read_text())
    assert (summary["status"], summary["frames"], summary["outputs"]) == ("ok", 9, [str(tmp_path / "v.mp4")])
    assert seen == [(1, 1), (2, 5), (3, 9)]
    assert count_frames(str(tmp_path / "v.mp4")) == (9, 64, 64)
    flashdecode.decode_file(CROP, tmp_path / "frames", model="tiny", weights="random")
    with pytest.raises(FlashdecodeError, match="already holds 9 frames"):  # a second run never mixes frames in
        flashdecode.decode_file(CROP, tmp_path / "frames", model="tiny", weights="random")
    assert len(list((tmp_path / "frames").iterdir())) == 9


def test_closed_stdout_pipe_ends_cleanly(tmp_path):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((1, 16, 12, 16, 16)).astype(np.float32))
    dec = popen("decode", str(tmp_path / "z.npy"), "-o", "-", *TINY, "--format", "raw", "--quiet",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(dec.stdout.read(1000)) == 1000
    dec.stdout.close()  # like `| head -c 1000`
    _, err = dec.communicate(timeout=90)
    assert dec.returncode == 141, err.decode()
    assert "Traceback" not in err.decode() and "Exception ignored" not in err.decode()


def test_nan_mid_stream_keeps_the_frames_so_far(tmp_path):
    bad = frame(2)
    bad[3, 1, 1] = np.nan
    out = tmp_path / "v.mp4"
    r = cli("decode", "-", "-o", str(out), *TINY, "--quiet", input=npy_stream(frame(0), frame(1), bad))
    assert r.returncode == 2
    assert r.stderr.decode().splitlines()[-1].startswith("error: stdin array 2 contains 1 NaN and 0 Inf values")
    assert "channel 3, latent frame 2" in r.stderr.decode()
    assert count_frames(str(out)) == (5, 64, 64)


# -- inputs, layouts, batches (in-process) ----------------------------------------------------------------

def test_safetensors_on_stdin_and_defaults(tmp_path):
    out = tmp_path / "v.mkv"
    r = runner.invoke(app, ["decode", "-", "-o", str(out), *TINY, "--fps", "24", "--crf", "30"],
                      input=CROP.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert count_frames(str(out)) == (9, 64, 64)
    assert "decoded 9 frames from 3 latent frames" in r.stderr


def test_batch_to_separate_outputs(tmp_path):
    np.save(tmp_path / "b.npy", np.random.default_rng(0).standard_normal((2, 16, 2, 8, 8)).astype(np.float32))
    r = runner.invoke(app, ["decode", str(tmp_path / "b.npy"), "-o", str(tmp_path / "out.mp4"), *TINY, "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert count_frames(str(tmp_path / "out_b0.mp4")) == count_frames(str(tmp_path / "out_b1.mp4")) == (5, 64, 64)
    r = runner.invoke(app, ["decode", str(tmp_path / "b.npy"), "-o", str(tmp_path / "one.y4m"), *TINY,
                            "--batch-index", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert count_frames(str(tmp_path / "one.y4m")) == (5, 64, 64)
    assert not (tmp_path / "one_b1.y4m").exists()


def test_ntchw_raw_wan22(tmp_path):
    z = np.random.default_rng(0).standard_normal((1, 2, 48, 3, 5)).astype(np.float32)  # NTCHW, Wan2.2
    np.save(tmp_path / "z.npy", z)
    summary = tmp_path / "s.json"
    r = runner.invoke(app, ["decode", str(tmp_path / "z.npy"), "-o", str(tmp_path / "v.webm"), *TINY, "--raw",
                            "--json", str(summary), "--quiet"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(summary.read_text())
    assert (s["latent_space"], s["frames"], s["width"], s["height"]) == ("wan2.2", 5, 80, 48)
    assert count_frames(str(tmp_path / "v.webm")) == (5, 80, 48)


# -- errors: one line, exit 2, nothing half-written left behind ---------------------------------------------

def _write(tmp_path, name, data=None, array=None):
    p = tmp_path / name
    if array is not None:
        np.save(p, array)
    else:
        p.write_bytes(data)
    return str(p)


def _with_metadata(tmp_path, **metadata):
    from safetensors.torch import load_file, save_file

    p = tmp_path / "m.safetensors"
    save_file(load_file(CROP), p, metadata=metadata)
    return str(p)


def _png_run(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(2):
        (tmp_path / "seq" / f"{i:05d}.png").write_bytes(b"an earlier run")
    return str(CROP)


def nan_latents():
    z = np.zeros((1, 16, 3, 8, 8), np.float32)
    z[0, 4, 1, 2, 3] = np.nan
    z[0, 5, 2, 0, 0] = -np.inf
    return z


ERRORS = {  # name: (make input -> path, extra args, expected message)
    "missing input": (lambda t: str(t / "nope.safetensors"), [], "input .*nope.safetensors does not exist"),
    "unknown input extension": (lambda t: _write(t, "z.ckpt", b"\x80\x02"), [], "unknown input extension '.ckpt'"),
    "cut pickle as .pt": (lambda t: _write(t, "z.pt", b"\x80\x02"), [], "z.pt is truncated or not a torch.save"),
    "unknown output extension": (lambda t: str(CROP), ["-o", "{t}/out.avi"], "unknown output extension '.avi'"),
    "truncated safetensors": (lambda t: _write(t, "cut.safetensors", CROP.read_bytes()[:-64]), [],
                              "is truncated or not a valid safetensors file"),
    "corrupt npy": (lambda t: _write(t, "bad.npy", b"\x93NUMPX\x01\x00" + b"\0" * 100), [], "not a valid .npy"),
    "truncated npy": (lambda t: _write(t, "cut.npy", npy_stream(np.zeros((16, 2, 8, 8), np.float32))[:-1]), [],
                      "is truncated: its header promises 8192 bytes of data, got 8191"),
    "wrong rank": (lambda t: _write(t, "r.npy", array=np.zeros((16, 64), np.float32)), [], "has rank 2"),
    "channels": (lambda t: _write(t, "c.npy", array=np.zeros((1, 7, 2, 8, 8), np.float32)), [],
                 "has 7 channels .* but wan2.1 has 16, wan2.2 and demo have 48"),
    "channels vs model": (lambda t: str(CROP), ["--latent-space", "wan2.2"],
                          "has 16 channels .* but latent space 'wan2.2' \\(--latent-space\\) has 48"),
    "nan": (lambda t: _write(t, "n.npy", array=nan_latents()), [],
            "contains 1 NaN and 1 Inf values .* first is at batch 0, channel 4, latent frame 1, row 2, col 3"),
    "grid too large": (lambda t: str(CROP), ["--env", "FLASHDECODE_AVAILABLE_MEMORY=1M"],
                       "needs about .* but only 1.0 MiB is available; use a smaller --model"),
    "missing weights": (lambda t: str(CROP), ["--model", "xl", "--env", "FLASHDECODE_WEIGHTS={t}"],
                        "no weights for model 'xl' .* --weights random"),
    "weights file missing": (lambda t: str(CROP), ["--weights", "{t}/w.safetensors"], "w.safetensors does not exist"),
    "unwritable output": (lambda t: str(CROP), ["-o", "{t}/afile/out.mp4"], "cannot write output .*afile/out.mp4"),
    "batch index": (lambda t: str(CROP), ["--batch-index", "3"], "--batch-index 3 is out of range: .* batch of 1"),
    "batch to stdout": (lambda t: _write(t, "b.npy", array=np.zeros((2, 16, 1, 8, 8), np.float32)), ["-o", "-"],
                        "holds a batch of 2; stdout takes one video: pass --batch-index N"),
    "format without stdout": (lambda t: str(CROP), ["--format", "raw"], "--format applies to stdout"),
    "unknown codec": (lambda t: str(CROP), ["--codec", "nope"], "'nope' is an unknown or unavailable video encoder"),
    "empty stdin": (lambda t: "-", ["-o", "{t}/out.mp4"], "stdin is empty"),
    "audio codec": (lambda t: str(CROP), ["--codec", "aac"], "'aac' is an audio encoder, not a video one"),
    "unknown preset": (lambda t: str(CROP), ["--preset", "quick"], "unknown --preset 'quick' for libx264"),
    "fps zero": (lambda t: str(CROP), ["--fps", "0"], "--fps 0.0 is not a usable frame rate; pass a number"),
    "fps negative": (lambda t: str(CROP), ["--fps", "-5"], "--fps -5.0 is not a usable frame rate"),
    "fps nan": (lambda t: str(CROP), ["--fps", "nan"], "--fps nan is not a usable frame rate"),
    "fps inf": (lambda t: str(CROP), ["--fps", "inf"], "--fps inf is not a usable frame rate"),
    "fps huge": (lambda t: str(CROP), ["--fps", "1e12"], "--fps 1000000000000.0 is not a usable frame rate"),
    "metadata fps zero": (lambda t: _with_metadata(t, fps="0"), [],
                          "the 'fps' metadata of .*m.safetensors \\('0'\\) is not a usable frame rate; pass --fps"),
    "metadata fps junk": (lambda t: _with_metadata(t, fps="fast"), [], "'fps' metadata .* pass --fps to override"),
    "zero latent frames": (lambda t: _write(t, "e.npy", array=np.zeros((1, 16, 0, 8, 8), np.float32)), [], "."),
    "pattern two numbers": (lambda t: str(CROP), ["-o", "{t}/f/%d%d.png"], "needs exactly one frame number"),
    "pattern %s": (lambda t: str(CROP), ["-o", "{t}/f/%s.png"], "needs exactly one frame number"),
    "pattern not png": (lambda t: str(CROP), ["-o", "{t}/f/%05d.jpg"], "must end in .png"),
    "json is a folder": (lambda t: str(CROP), ["--json", "{t}"], "--json .* is a folder"),
    "png folder reused": (lambda t: _png_run(t), ["-o", "{t}/seq"], "already holds 2 frames .*--overwrite"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors(tmp_path, case):
    make, extra, expected = ERRORS[case]
    (tmp_path / "afile").write_text("not a folder")
    inp = make(tmp_path)
    extra = [a.replace("{t}", str(tmp_path)) for a in extra]
    env = {}
    while "--env" in extra:
        i = extra.index("--env")
        k, v = extra[i + 1].split("=", 1)
        env[k] = v
        del extra[i:i + 2]
    args = ["decode", inp, *TINY, *extra]
    if "--weights" in extra or case == "missing weights":
        args = ["decode", inp, *extra]
    if "-o" not in extra:
        args += ["-o", str(tmp_path / "out.mp4")]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = runner.invoke(app, args, env=env, input=b"" if inp == "-" else None)
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err_lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(expected, err_lines[0]), err_lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial or empty output left behind


# -- info -----------------------------------------------------------------------------------------------

@needs_real
def test_info_real_latents():
    r = runner.invoke(app, ["info", str(REAL)])
    assert r.exit_code == 0, r.stderr
    for text in ("[1, 16, 16, 40, 64] as [B, C, T, h, w]", "bfloat16", "ncthw (file metadata)",
                 "wan2.1 (file metadata)", "61 frames of 512x320", "none"):
        assert text in r.stdout, r.stdout


def test_info_json_npy_and_stdin(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((1, 3, 48, 4, 6), np.float16))  # NTCHW, 48 channels
    d = json.loads(runner.invoke(app, ["info", str(tmp_path / "z.npy"), "--json"]).stdout)
    assert (d["layout"], d["latent_space"], d["latent_space_reason"]) == ("ntchw", "wan2.2", "48 channels")
    assert (d["pixel_frames"], d["width"], d["height"], d["dtype"]) == (9, 96, 64, "float16")
    r = runner.invoke(app, ["info", "-", "--json"], input=npy_stream(frame(0), frame(1), frame(2)))
    d = json.loads(r.stdout)
    assert d["shape"] == [1, 16, 3, 8, 8] and d["pixel_frames"] == 9 and d["nonfinite_values"] == 0
    r = runner.invoke(app, ["info", str(tmp_path / "missing.npy")])
    assert r.exit_code == 2 and r.stderr.startswith("error: input")


# -- run_guarded ------------------------------------------------------------------------------------------

def test_run_guarded(capsys):
    @run_guarded
    def fails(exc):
        raise exc

    for exc, code in [(FlashdecodeError("bad thing; fix it"), 2), (KeyboardInterrupt(), 130)]:
        with pytest.raises(typer.Exit) as e:
            fails(exc)
        assert e.value.exit_code == code
    assert capsys.readouterr().err == "error: bad thing; fix it\ninterrupted\n"
    with pytest.raises(ValueError):  # anything else is a bug: let it show
        with run_guarded():
            raise ValueError("bug")


@pytest.mark.cuda
def test_decode_file_on_cuda_frames_arrive_whole_and_in_order(tmp_path):
    """On CUDA the frames go through pinned host buffers copied on a side stream: a PNG sequence (lossless)
    must equal the decoder's own output, frame for frame (a slot reused too early would show)."""
    import flashdecode
    from safetensors.torch import load_file

    from flashdecode.convert import to_rgb24

    decoder = flashdecode.load_decoder("tiny", "wan2.1", weights="random", device="cuda", dtype="fp32")
    z = load_file(CROP)["latents"]
    z = z.repeat(1, 1, 4, 1, 1)  # 12 latent frames: more chunks than host buffers
    np.save(tmp_path / "z.npy", z.float().numpy())
    summary = flashdecode.decode_file(tmp_path / "z.npy", tmp_path / "frames", decoder=decoder)
    expected = to_rgb24(decoder.decode(z.float()))[0].cpu().numpy()
    assert summary["frames"] == len(expected) == 45
    for i, want in enumerate(expected):
        with av.open(str(tmp_path / "frames" / f"{i:05d}.png")) as c:
            assert np.array_equal(next(c.decode(video=0)).to_ndarray(format="rgb24"), want), i
