"""video_io: every output kind reads back with PyAV, the queue applies back-pressure, bad outputs fail early."""
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from flashdecode.convert import HostCopies, rgb24_to_i420, to_i420, to_rgb24
from flashdecode.video_io import (VideoWriter, batch_output_name, complete_fragments_size, count_video_frames,
                                  mp4_finished, output_kind, png_frames, to_uint8_frames)
from flashdecode.errors import FlashdecodeError

REPO = Path(__file__).resolve().parents[1]


def frames(k, h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (k, h, w, 3), dtype=np.uint8)


def read_back(src, **kw):
    with av.open(src, **kw) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(decoded)


def test_to_uint8_frames():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0]).view(1, 5, 1, 1).expand(3, 5, 2, 4)  # [3,k,H,W]
    out = to_uint8_frames(x)
    assert out.shape == (5, 2, 4, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8_frames(torch.zeros(2, 3, 4, 8, 8)).shape == (2, 4, 8, 8, 3)  # batched [B,3,k,H,W]


@pytest.mark.parametrize("name", ["v.mp4", "v.mov", "v.mkv", "v.webm", "v.y4m"])
def test_containers_read_back(tmp_path, name):
    out = tmp_path / name
    with VideoWriter(str(out), fps=16) as w:
        w.write(frames(1))
        w.write(frames(4, seed=1))
    video = read_back(str(out))
    assert video.shape == (5, 32, 48, 3)
    if name == "v.y4m":  # uncompressed 4:2:0: close to the input where colours are smooth
        flat = np.full((1, 32, 48, 3), 90, np.uint8)
        with VideoWriter(str(out)) as w:
            w.write(flat)
        assert np.abs(read_back(str(out)).astype(int) - 90).max() <= 2


def test_png_folder_and_pattern(tmp_path):
    with VideoWriter(str(tmp_path / "seq")) as w:  # a folder, created
        w.write(frames(5))
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == [f"{i:05d}.png" for i in range(5)]
    assert np.array_equal(read_back(str(tmp_path / "seq" / "00003.png"))[0], frames(5)[3])  # lossless
    with VideoWriter(str(tmp_path / "pat" / "f_%03d.png")) as w:
        w.write(frames(2))
    assert sorted(p.name for p in (tmp_path / "pat").iterdir()) == ["f_000.png", "f_001.png"]


@pytest.mark.parametrize("fmt", ["y4m", "raw", "mp4"])
def test_stdout_formats(tmp_path, monkeypatch, fmt):
    path = tmp_path / "stdout.bin"
    with open(path, "w") as fake_stdout:
        monkeypatch.setattr(sys, "stdout", fake_stdout)
        with VideoWriter("-", stdout_format=fmt) as w:
            w.write(frames(1))
            w.write(frames(4))
    data = path.read_bytes()
    if fmt == "raw":
        assert data == frames(1).tobytes() + frames(4).tobytes()
    else:
        assert read_back(io.BytesIO(data), format={"y4m": "yuv4mpegpipe", "mp4": None}[fmt]).shape == (5, 32, 48, 3)
    if fmt == "mp4":
        assert b"moof" in data  # fragmented: playable from a pipe, no seek back to write the index


def test_back_pressure(tmp_path):
    """With the encoder stuck, write() blocks once the queue is full instead of piling frames up."""
    release = threading.Event()

    class StuckSink:
        written = 0

        def write(self, f, fmt, decoded_at=None):
            release.wait(10)
            StuckSink.written += len(f)

        def close(self):
            pass

    w = VideoWriter(str(tmp_path / "v.mp4"), queue_chunks=2)
    w.sink = StuckSink()
    done = threading.Event()

    def produce():
        for _ in range(5):  # 1 in the sink + 2 queued; the 4th put must wait
            w.write(frames(1))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set() and w._queue.qsize() == 2
    release.set()
    assert done.wait(5)
    w.close()
    assert StuckSink.written == 5 and w.frames_written == 5


def test_writer_error_reaches_the_decoder_thread(tmp_path):
    class Broken:
        def write(self, f, fmt, decoded_at=None):
            raise BrokenPipeError(32, "Broken pipe")

        def close(self):
            pass

    w = VideoWriter(str(tmp_path / "v.mp4"))
    w.sink = Broken()
    w.write(frames(1))
    with pytest.raises(BrokenPipeError):
        for _ in range(50):
            w.write(frames(1))
            time.sleep(0.01)
    w.close()  # already reported: closing does not raise it again
    assert not (tmp_path / "v.mp4").exists()  # nothing was written: nothing left behind


def test_output_checks_happen_up_front(tmp_path):
    with pytest.raises(FlashdecodeError, match="unknown output extension '.avi'"):
        VideoWriter(str(tmp_path / "v.avi"))
    with pytest.raises(FlashdecodeError, match="single .png"):
        output_kind("x.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlashdecodeError, match="cannot write output .*pick a writable location"):
        VideoWriter(str(tmp_path / "file" / "v.mp4"))
    with pytest.raises(FlashdecodeError, match="cannot create output folder"):
        VideoWriter(str(tmp_path / "file" / "frames" / "%05d.png"))
    with pytest.raises(FlashdecodeError, match="'nope' is an unknown or unavailable video encoder"):
        VideoWriter(str(tmp_path / "v.mp4"), codec="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_nothing_written_leaves_nothing(tmp_path):
    VideoWriter(str(tmp_path / "v.mp4")).close()
    VideoWriter(str(tmp_path / "a" / "b" / "%05d.png")).close()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep.mp4").write_bytes(b"old")  # a file that was there before is not deleted
    VideoWriter(str(tmp_path / "keep.mp4")).close()
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_batch_output_names():
    assert batch_output_name("out.mp4", 0) == "out_b0.mp4"
    assert batch_output_name("dir/out.y4m", 2) == "dir/out_b2.y4m"
    assert batch_output_name("frames", 1) == "frames_b1"
    assert batch_output_name("frames/%05d.png", 1) == "frames_b1/%05d.png"
    assert batch_output_name("%05d.png", 1) == "%05d_b1.png"


# -- the YUV route: converted on the device, BT.709 limited range, tagged ------------------------------------

def test_i420_is_bt709_limited_range():
    colours = torch.tensor([[1, 1, 1], [-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float32)
    px = colours.T[None, :, :, None, None].expand(1, 3, 5, 2, 2) * 1.5  # out of range values are clamped
    i420 = to_i420(px)[0].view(5, 3, 2).numpy().astype(int)  # per frame: 4 Y, then 1 U, then 1 V
    y, u, v = i420[:, :2].reshape(5, -1)[:, 0], i420[:, 2, 0], i420[:, 2, 1]
    assert y.tolist() == [235, 16, 63, 173, 32]  # 16 + 219 * (0.2126 R + 0.7152 G + 0.0722 B)
    assert u.tolist() == [128, 128, 102, 42, 240]
    assert v.tolist() == [128, 128, 240, 26, 118]
    # rgb24 handed to a video writer gets the same mapping
    rgb = to_rgb24(px)[0].numpy()
    assert np.array_equal(rgb24_to_i420(rgb).reshape(5, -1), to_i420(px)[0].numpy())


def smooth_video(k=9, h=64, w=96):
    """Colourful, smooth, moving content in [-1, 1]: what a chroma or matrix error shows up on."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frames = [torch.stack([torch.sin(3 * xx + 0.3 * t), torch.cos(2 * yy - 0.2 * t), torch.sin(2 * (xx + yy) + 0.1 * t)])
              for t in range(k)]
    return torch.stack(frames, 1)[None] * 0.9  # [1,3,k,H,W]


def psnr(decoded: np.ndarray, pixels: torch.Tensor) -> float:
    ref = (pixels[0].clamp(-1, 1) + 1).mul(127.5).permute(1, 2, 3, 0).numpy()
    return 10 * np.log10(255 ** 2 / np.mean((decoded.astype(np.float64) - ref) ** 2))


def ffmpeg_rgb(path, h, w) -> np.ndarray:
    """Decode with a real ffmpeg binary (imageio-ffmpeg's static build) to rgb24, its own colour handling."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def swscale_bt709_mp4(pixels: torch.Tensor, path, fps) -> None:
    """The reference route: float -> rgb24 -> ffmpeg's swscale to BT.709 yuv420p -> the writer's x264 settings."""
    from av.video.reformatter import ColorRange, Colorspace

    k, h, w = pixels.shape[2:]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        s.pix_fmt, s.width, s.height = "yuv420p", w, h
        ctx = s.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = ctx.color_range = 1
        ctx.gop_size = fps
        for f in to_rgb24(pixels)[0].numpy():
            yuv = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
            yuv.colorspace, yuv.color_range = 1, 1
            for p in s.encode(yuv):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_yuv_route_matches_float_output_in_pyav_and_ffmpeg(tmp_path):
    """The device-converted YUV video decodes as close to the float frames as ffmpeg's own BT.709 conversion
    (swscale from rgb24) does at the same settings, in PyAV and in a real ffmpeg: no colour shift."""
    px = smooth_video()
    k, h, w = px.shape[2:]
    with VideoWriter(str(tmp_path / "yuv.mp4"), fps=16) as wr:
        assert wr.input_format == "yuv420p"
        wr.write(to_i420(px)[0].view(k, h * 3 // 2, w).numpy(), "yuv420p")
    swscale_bt709_mp4(px, tmp_path / "sws.mp4", fps=16)  # the reference
    with av.open(str(tmp_path / "yuv.mp4")) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)  # bt709, tv
    float_mean = (px[0].clamp(-1, 1) + 1).mul(127.5).mean((1, 2, 3)).numpy()

    def cast(decoded):  # the largest shift of a channel's mean level
        return np.abs(decoded.reshape(-1, 3).mean(0) - float_mean).max()

    sws = read_back(str(tmp_path / "sws.mp4"))
    for decoded in (read_back(str(tmp_path / "yuv.mp4")), ffmpeg_rgb(tmp_path / "yuv.mp4", h, w)):
        assert decoded.shape == (k, h, w, 3)
        assert psnr(decoded, px) >= psnr(sws, px) - 0.5 and psnr(decoded, px) > 33, (psnr(decoded, px), psnr(sws, px))
        assert cast(decoded) <= cast(sws) + 0.5, (cast(decoded), cast(sws))  # no colour cast


def test_host_copies_on_the_cpu_are_views():
    t = torch.arange(12, dtype=torch.uint8).view(1, 2, 6)
    host, ready, done = HostCopies(torch.device("cpu")).to_host(t, readers=2)
    ready(), done(), done()
    assert host.shape == (1, 2, 6) and np.shares_memory(host, t.numpy())


@pytest.mark.cuda
def test_host_copies_ring_on_cuda():
    copies = HostCopies(torch.device("cuda"), slots=2)
    outs = []
    for i in range(5):  # more chunks than slots: each slot is freed by its readers before reuse
        t = torch.full((1, 3, 8), i, dtype=torch.uint8, device="cuda")
        host, ready, done = copies.to_host(t, readers=1)
        ready()
        outs.append(host.copy())
        done()
    assert [int(o[0, 0, 0]) for o in outs] == [0, 1, 2, 3, 4]


# -- playable at any moment, and after a full disk ---------------------------------------------------------

@pytest.mark.parametrize("name", ["v.mp4", "v.mkv"])
def test_file_is_playable_while_it_is_written(tmp_path, name):
    """Fragments (MP4) / clusters (MKV) reach the disk about every second: a copy taken mid-run plays, and
    lacks at most the last second plus what x264's frame threads hold (ultrafast: no lookahead)."""
    out = tmp_path / name
    threads_delay = int(1.5 * (os.cpu_count() or 1)) + 1  # x264's frame threads each hold a frame
    n = 4 * (10 + threads_delay // 4 + 1)  # >= 5 s at 8 fps past the encoder's delay
    w = VideoWriter(str(out), fps=8, preset="ultrafast")
    for i in range(n // 4):
        w.write(frames(4, seed=i))
    deadline = time.time() + 30
    while w.frames_written < n and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / ("copy" + out.suffix)).write_bytes(out.read_bytes())  # what kill -9 now would leave
    w.close()
    n_mid = count_video_frames(tmp_path / ("copy" + out.suffix))
    assert 8 <= n_mid <= n and n - n_mid <= 8 + threads_delay + 4, (n_mid, n)
    assert count_video_frames(out) == n
    if name == "v.mp4":
        assert b"moof" in out.read_bytes()


def test_complete_fragments_size(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(str(out), fps=4) as w:
        for i in range(4):
            w.write(frames(4, seed=i))
    data = out.read_bytes()
    assert complete_fragments_size(out) == len(data)
    cut = int(len(data) * 0.6)
    (tmp_path / "cut.mp4").write_bytes(data[:cut])  # a fragment cut short, as by a full disk
    good = complete_fragments_size(tmp_path / "cut.mp4")
    assert 0 < good < cut
    (tmp_path / "ok.mp4").write_bytes(data[:good])
    assert 0 < count_video_frames(tmp_path / "ok.mp4") < 16
    assert count_video_frames(tmp_path / "missing.mp4") == 0


FSIZE_WRITER = """
import resource, signal, sys, numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
from flashdecode.video_io import VideoWriter
w = VideoWriter(sys.argv[1], fps=16)
try:
    for i in range(60):
        w.write(np.random.default_rng(i).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    w.close()
except OSError as e:
    w.close()
    print(e.errno, w.frames_written)
"""


@pytest.mark.parametrize("name", ["v.mp4", "v.mkv", "v.y4m"])
def test_file_size_limit_leaves_a_playable_file(tmp_path, name):
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(out), "150000"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    err, written = map(int, r.stdout.split())
    assert err == 27 and 0 < written < 240  # EFBIG, and only what fits
    assert count_video_frames(out) == written  # what the writer reports is what a reader finds
    if name == "v.mp4":
        assert complete_fragments_size(out) == out.stat().st_size  # only complete fragments are left


# -- output names and PNG folders ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["f/%d%d.png", "f/%s.png", "f/%x.png", "f%d/x.png"])
def test_bad_png_patterns(pattern):
    with pytest.raises(FlashdecodeError, match="pattern"):
        output_kind(pattern)
    assert output_kind("f/%04d.png") == output_kind("f/100%%_%d.png") == "png"


def test_png_folder_of_an_earlier_run_is_refused_then_replaced(tmp_path):
    with VideoWriter(str(tmp_path / "seq")) as w:
        w.write(frames(5))
    (tmp_path / "seq" / "notes.txt").write_text("mine")
    with pytest.raises(FlashdecodeError, match="already holds 5 frames named like %05d.png .*--overwrite"):
        VideoWriter(str(tmp_path / "seq"))
    with VideoWriter(str(tmp_path / "seq"), overwrite=True) as w:
        w.write(frames(2, seed=3))
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == ["00000.png", "00001.png", "notes.txt"]
    assert png_frames(tmp_path / "seq", "%05d.png")[-1].name == "00001.png"
    assert np.array_equal(read_back(str(tmp_path / "seq" / "00001.png"))[0], frames(2, seed=3)[1])
    with VideoWriter(str(tmp_path / "seq" / "other_%d.png")) as w:  # another pattern in the same folder is fine
        w.write(frames(1))


def test_codec_preset_fps_checks(tmp_path):
    with pytest.raises(FlashdecodeError, match="'aac' is an audio encoder, not a video one"):
        VideoWriter(str(tmp_path / "v.mp4"), codec="aac")
    with pytest.raises(FlashdecodeError, match="unknown --preset 'quick' for libx264; choose one of ultrafast"):
        VideoWriter(str(tmp_path / "v.mp4"), preset="quick")
    with pytest.raises(FlashdecodeError, match="--preset applies to libx264 and libx265, not 'libvpx-vp9'"):
        VideoWriter(str(tmp_path / "v.webm"), preset="fast")
    for bad in (0, -1, float("nan"), float("inf"), 1e12):
        with pytest.raises(FlashdecodeError, match="not a usable frame rate"):
            VideoWriter(str(tmp_path / "v.mp4"), fps=bad)
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(str(tmp_path / "v.mp4"), preset="ultrafast") as w:
        w.write(frames(2))
    assert count_video_frames(tmp_path / "v.mp4") == 2


def test_file_size_limit_png_sequence_keeps_whole_frames(tmp_path):
    """The limit is per file: 12 flat frames fit, the first noise frame does not and is not left half-written."""
    script = FSIZE_WRITER.replace("np.random.default_rng(i).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)",
                                  "np.full((4, 64, 64, 3), 7 * i, np.uint8) if i < 3 else "
                                  "np.random.default_rng(i).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)")
    out = tmp_path / "seq"
    r = subprocess.run([sys.executable, "-c", script, str(out), "9000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["27", "12"]  # EFBIG after 12 frames
    pngs = sorted(out.iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(12)]
    for p in pngs:  # every file left is a whole frame
        assert read_back(str(p)).shape == (1, 64, 64, 3)


def test_decode_file_yuv_mp4_matches_float_output_on_real_content(tmp_path):
    """Acceptance (issue 9): the bundled demo decoder on the bundled sample (real content, trained weights),
    through decode_file's YUV route into an MP4, read back by PyAV and a real ffmpeg, is within 0.5 dB of the
    same float frames through ffmpeg's own BT.709 conversion at the same encoder settings."""
    import flashdecode
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(REPO / "samples" / "cockatoo_256x256_41f.safetensors"), "pt") as f:
        z, meta = f.get_tensor("latents")[:, :, :3].contiguous(), f.metadata()
    save_file({"latents": z}, str(tmp_path / "z.safetensors"), metadata=meta)
    decoder = flashdecode.load_decoder(None, "demo", device="cpu")  # weights/demo-xs.safetensors
    px = decoder.decode(z)  # float32 [1,3,9,256,256]: the reference
    summary = flashdecode.decode_file(tmp_path / "z.safetensors", tmp_path / "v.mp4", decoder=decoder)
    k, h, w = px.shape[2:]
    assert (summary["frames"], summary["fps"]) == (k, 20.0)
    sws = tmp_path / "sws.mp4"
    swscale_bt709_mp4(px, sws, fps=20)
    reference = psnr(read_back(str(sws)), px)
    for decoded in (read_back(str(tmp_path / "v.mp4")), ffmpeg_rgb(tmp_path / "v.mp4", h, w)):
        assert psnr(decoded, px) >= reference - 0.5 and reference > 25, (psnr(decoded, px), reference)


def test_fragmented_mp4_starts_at_zero(tmp_path):
    """B-frames delay the first frame's timestamp unless the CTS offsets may be negative: it starts at t = 0."""
    with VideoWriter(str(tmp_path / "v.mp4"), fps=16) as w:
        w.write(frames(8))
    with av.open(str(tmp_path / "v.mp4")) as c:
        first = next(c.decode(video=0))
        assert first.pts == 0 and c.streams.video[0].start_time in (0, None)


@pytest.mark.parametrize("name", ["v.mp4", "v.mkv"])
def test_failed_final_flush_is_noticed(tmp_path, name):
    """A short video is written whole at close, where PyAV does not report a failed write: the file is
    checked, and a cut-short one is an error (and removed when no complete fragment is left)."""
    script = FSIZE_WRITER.replace("range(60)", "range(2)")
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-c", script, str(out), "1200"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err, written = map(int, r.stdout.split())
    assert err == 27 and written == 0  # EFBIG: MP4's writes are followed (_Fragments), MKV's reported by PyAV
    assert not out.exists()
    if name == "v.mkv":
        return
    with VideoWriter(str(out)) as w:  # without a limit the same video is finished and checked as such
        w.write(frames(8))
    assert mp4_finished(out)
    (tmp_path / "cut.mp4").write_bytes(out.read_bytes()[:-8])
    assert not mp4_finished(tmp_path / "cut.mp4")


def test_crf_range(tmp_path):
    with pytest.raises(FlashdecodeError, match="--crf -5 is out of range for libx264: 0 \\(best\\) to 51"):
        VideoWriter(str(tmp_path / "v.mp4"), crf=-5)
    with pytest.raises(FlashdecodeError, match="--crf 70 is out of range for libvpx-vp9: 0 \\(best\\) to 63"):
        VideoWriter(str(tmp_path / "v.webm"), crf=70)
    with pytest.raises(FlashdecodeError, match="--crf applies to libx264, .* not 'mpeg4'"):
        VideoWriter(str(tmp_path / "v.mkv"), codec="mpeg4", crf=10)
    assert list(tmp_path.iterdir()) == []


def test_conversions_take_any_strides():
    """The model's native output may be a strided view (a batch of 2 from a permuted buffer)."""
    px = smooth_video(k=4, h=8, w=12).expand(2, -1, -1, -1, -1).permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    assert not px.is_contiguous()
    assert torch.equal(to_i420(px), to_i420(px.contiguous())) and torch.equal(to_rgb24(px), to_rgb24(px.contiguous()))


# -- animated previews: GIF, WebP, APNG ---------------------------------------------------------------------

def read_preview(path):
    """Every frame as imageio (its pillow plugin, frame by frame) and Pillow see them: (frames [n,H,W,3], Pillow's count)."""
    import imageio.v3 as iio
    from PIL import Image

    decoded = np.stack([f[..., :3] for f in iio.imiter(path, plugin="pillow")])
    with Image.open(path) as im:
        assert im.info.get("loop") == 0  # loops forever, like a GIF in a chat
        return decoded, im.n_frames


@pytest.mark.parametrize("name", ["p.gif", "p.webp", "p.apng"])
def test_previews_read_back(tmp_path, name):
    out = tmp_path / name
    flat = np.full((3, 32, 48, 3), (200, 40, 90), np.uint8)
    with VideoWriter(str(out), fps=8) as w:
        w.write(flat)
        w.write(frames(4, seed=1))
    assert output_kind(str(out)) == "preview" and w.frames_written == 7
    decoded, n = read_preview(out)
    assert n == 7 and decoded.shape == (7, 32, 48, 3)
    if name == "p.apng":  # lossless
        assert np.array_equal(decoded[3:], frames(4, seed=1))
    tol = {"p.gif": 2, "p.webp": 12, "p.apng": 0}[name]  # a flat colour: in GIF's palette, near it in lossy WebP
    assert np.abs(decoded[:3].astype(int) - flat).max() <= tol


def test_preview_options(tmp_path):
    for option in ({"crf": 20}, {"codec": "libx264"}, {"preset": "fast"}):
        with pytest.raises(FlashdecodeError, match="apply to video files, not the .gif preview .* --scale and --fps"):
            VideoWriter(str(tmp_path / "p.gif"), **option)
    assert list(tmp_path.iterdir()) == []


PREVIEW_WRITER = """
import resource, sys, numpy as np
from flashdecode.video_io import VideoWriter
w = VideoWriter(sys.argv[1], fps=16)
for i in range(int(sys.argv[2]) // 4):
    w.write(np.random.default_rng(i).integers(0, 8, (4, 64, 64, 3), dtype=np.uint8) * 32)  # few colours: fast GIFs
w.close()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, w.frames_written)
"""


@pytest.mark.parametrize("name", [pytest.param("p.gif", marks=pytest.mark.slow), "p.webp", "p.apng"])
def test_preview_memory_is_flat_in_length(tmp_path, name):
    """Frames are encoded and written as they arrive: 400 frames peak where 40 do (imageio's pillow plugin would
    hold them all: 4.8 MiB more here)."""
    peaks = []
    for n in (40, 400):
        r = subprocess.run([sys.executable, "-c", PREVIEW_WRITER, str(tmp_path / f"{n}{name}"), str(n)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        peak, written = map(int, r.stdout.split())
        assert written == n
        peaks.append(peak)
    assert peaks[1] < peaks[0] + 1536, peaks  # KiB
    from PIL import Image
    with Image.open(tmp_path / f"400{name}") as im:
        assert im.n_frames == 400


CROP = Path(__file__).parent / "data" / "wan21_crop_3lat_8x8.safetensors"  # real Wan2.1 latents, 8x8 grid: 64x64


@pytest.mark.parametrize("name, size", [("p.gif", (32, 32)), ("p.webp", (16, 16)), ("p.apng", (96, 96)),
                                        ("v.mp4", (32, 32))])
def test_decode_file_scale_and_fps(tmp_path, name, size):
    """--scale resizes on the device before the uint8 conversion, for previews and videos alike; --fps is kept."""
    import flashdecode

    scale = size[0] / 64
    out = tmp_path / name
    summary = flashdecode.decode_file(CROP, out, model="tiny", weights="random", scale=scale, fps=10)
    assert (summary["frames"], summary["height"], summary["width"], summary["fps"]) == (9, *size, 10.0)
    if name == "v.mp4":
        with av.open(str(out)) as c:
            assert c.streams.video[0].average_rate == 10
        assert read_back(str(out)).shape == (9, *size, 3)
        return
    decoded, n = read_preview(out)
    assert n == 9 and decoded.shape == (9, *size, 3)
    from PIL import Image
    with Image.open(out) as im:  # 100 ms a frame
        im.seek(1)
        im.load()
        assert im.info.get("duration") == 100


def test_scale_resizes_like_interpolate():
    from flashdecode.scale import check_scale, resize, scaled_size

    assert scaled_size(480, 832, 0.5) == (240, 416) and scaled_size(64, 64, 0.3) == (20, 20)
    assert scaled_size(10, 10, 0.01) == (2, 2) and scaled_size(7, 9, None) == (7, 9)
    px = torch.rand(2, 3, 4, 16, 24) * 2 - 1
    small = resize(px, (8, 12))
    assert small.shape == (2, 3, 4, 8, 12)
    for b, t in ((0, 0), (1, 2)):  # each frame of each item resized on its own, channels kept apart
        one = torch.nn.functional.interpolate(px[b, :, t][None], (8, 12), mode="bilinear", antialias=True)
        assert torch.allclose(small[b, :, t], one[0], atol=1e-6)
    assert torch.allclose(resize(torch.full((1, 3, 2, 16, 24), 0.25), (6, 10)), torch.tensor(0.25))
    assert check_scale(1) is None and check_scale(0.5) == 0.5
    for bad in (0, -1, float("nan"), 5, "0.5", True):
        with pytest.raises(FlashdecodeError, match="is not a usable factor"):
            check_scale(bad)


PEAK_DECODE = """
import resource, runpy, sys
sys.argv = ["flashdecode", "decode", *sys.argv[1:]]
try:
    runpy.run_module("flashdecode", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.parametrize("name", [pytest.param("p.gif", marks=pytest.mark.slow), "p.webp"])
def test_preview_decode_peak_rss_flat_200_vs_20_latent_frames(tmp_path, name):
    """The whole CLI run (tiny model, random weights, 8x8 grid, --scale 0.5): 797 frames peak within 1.2x of 77.
    WebP about 7 s on a 2-core machine; GIF's per-frame palette makes it about 50 s, hence slow."""
    peaks = {}
    for T in (20, 200):
        z = tmp_path / f"z{T}.npy"
        np.save(z, np.random.default_rng(0).standard_normal((1, 16, T, 8, 8)).astype(np.float32))
        out = tmp_path / f"{T}{name}"
        r = subprocess.run([sys.executable, "-c", PEAK_DECODE, str(z), "-o", str(out), "--model", "tiny",
                            "--weights", "random", "--scale", "0.5", "-q"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks[T] = int(r.stdout.split()[-1])
        assert read_preview(out)[0].shape == (1 + 4 * (T - 1), 32, 32, 3)
    assert peaks[200] <= 1.2 * peaks[20], peaks


def test_full_disk_mid_chunk_keeps_every_whole_png_and_says_so(tmp_path):
    """The disk fills on the 7th frame, inside a chunk of 4: frames 0-5 stay whole, the 7th leaves nothing (not
    even its temporary), and frames_written says 6."""
    script = FSIZE_WRITER.replace("np.random.default_rng(i).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)",
                                  "np.concatenate([np.full((4 if i == 0 else 2, 64, 64, 3), 9, np.uint8), "  # fit
                                  "np.random.default_rng(i).integers(0, 256, (0 if i == 0 else 2, 64, 64, 3), "
                                  "dtype=np.uint8)])")  # noise: too big
    out = tmp_path / "seq"
    r = subprocess.run([sys.executable, "-c", script, str(out), "9000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["27", "6"]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(6)]  # no .part left behind
    for p in sorted(out.iterdir()):
        assert np.array_equal(read_back(str(p))[0], np.full((64, 64, 3), 9, np.uint8))


STDOUT_MP4_WRITER = FSIZE_WRITER.replace("VideoWriter(sys.argv[1], fps=16)", "VideoWriter('-', fps=16, stdout_format='mp4')") \
    .replace("print(e.errno, w.frames_written)", "print(e.errno, w.frames_written, file=sys.stderr)")


def test_fragmented_mp4_on_stdout_cut_by_a_size_limit_keeps_what_it_says(tmp_path):
    """`decode ... -o - --format mp4 > v.mp4` under a file-size limit: the file behind stdout is cut back to its
    last whole fragment, and the frames reported are exactly the frames a player finds."""
    out = tmp_path / "v.mp4"
    with open(out, "wb") as f:
        r = subprocess.run([sys.executable, "-c", STDOUT_MP4_WRITER, "-", "150000"], stdout=f, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err, written = map(int, r.stderr.split()[-2:])
    assert err == 27 and 0 < written < 240
    assert count_video_frames(out) == written
    assert complete_fragments_size(out) == out.stat().st_size  # nothing cut short is left
