"""video_io: every output kind reads back with PyAV, the queue applies back-pressure, bad outputs fail early."""
import io
import sys
import threading
import time

import av
import numpy as np
import pytest
import torch

from flashdecode.errors import FlashdecodeError
from flashdecode.video_io import VideoWriter, batch_output_name, output_kind, to_uint8_frames


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


@pytest.mark.parametrize("name", ["v.mp4", "v.mkv", "v.webm", "v.y4m"])
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

        def write(self, f):
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
        def write(self, f):
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
    with pytest.raises(FlashdecodeError, match="unknown or unavailable video encoder 'nope'"):
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
