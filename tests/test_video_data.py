from pathlib import Path

import av
import numpy as np
import pytest
import torch

from flashdecode.errors import FlashdecodeError
from flashdecode.training.video_data import (
    Segment, VideoClips, center_box, eval_clips, iter_frames, largest_4k1, list_videos, parse_source, probe, read_clip,
    read_frames, segments,
)

DATA = Path(__file__).parent / "data"
CLIP = DATA / "carphone_176x144_30fps_33f.mp4"  # 33 frames, 144x176


def write_video(path, frames: np.ndarray, codec="libx264", fps=25):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"  # ffv1 + bgr0: lossless RGB
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def test_probe():
    info = probe(CLIP)
    assert (info.frames, info.height, info.width) == (33, 144, 176)
    assert info.fps == pytest.approx(30)


def test_seeking_gives_the_same_frames_as_decoding_from_the_start():
    every = list(iter_frames(CLIP))
    assert len(every) == 33
    for start in (1, 13, 30):
        got = list(iter_frames(CLIP, start, 3))
        assert len(got) == 3
        assert all(np.array_equal(a, b) for a, b in zip(got, every[start:start + 3]))


def test_read_clip_shape_range_and_center_crop():
    clip = read_clip(CLIP, start=4, frames=9, size=(64, 64))
    assert clip.shape == (3, 9, 64, 64) and clip.dtype == torch.float32
    assert -1 <= clip.min() and clip.max() <= 1
    native = read_clip(CLIP, 0, 5)  # no size: the video's own pixels
    assert native.shape == (3, 5, 144, 176)
    frames = read_frames(CLIP, 0, 5)
    assert torch.allclose(native, frames.permute(3, 0, 1, 2).float() / 127.5 - 1)
    assert center_box(144, 176, 64, 64) == (0, 16, 144, 144)
    boxed = read_clip(CLIP, 0, 1, size=(32, 32), crop=(10, 20, 32, 32))  # a native-resolution crop
    assert torch.allclose(boxed, native[:, :1, 10:42, 20:52])


def test_read_errors(tmp_path):
    with pytest.raises(FlashdecodeError, match="does not exist"):
        read_clip(tmp_path / "nope.mp4")
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video")
    with pytest.raises(FlashdecodeError, match="not a video"):
        probe(bad)
    with pytest.raises(FlashdecodeError, match="only 3 frames"):
        read_clip(CLIP, start=30, frames=5)


def test_other_containers(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / "noise.mkv"  # mkv stores no frame count: probe counts packets
    write_video(path, frames, codec="ffv1")
    assert probe(path).frames == 9
    clip = read_clip(path, 2, 5)
    assert torch.allclose(clip, torch.from_numpy(frames[2:7]).permute(3, 0, 1, 2).float() / 127.5 - 1)


def test_sources_and_holdout():
    assert parse_source("a/b.mp4") == ("a/b.mp4", 0, None)
    assert parse_source("a/b.mp4:199-280") == ("a/b.mp4", 199, 280)
    assert parse_source("b.mp4:10-") == ("b.mp4", 10, None)
    assert list_videos(DATA) == [CLIP]
    assert segments([CLIP]) == [Segment(CLIP, 0, 33)]
    assert segments([CLIP], holdout=[f"{CLIP.name}:10-20"]) == [Segment(CLIP, 0, 10), Segment(CLIP, 20, 33)]
    assert segments([f"{CLIP}:5-30"], holdout=[f"{CLIP.name}:25-"]) == [Segment(CLIP, 5, 25)]
    assert segments([CLIP], holdout=[CLIP.name]) == []
    with pytest.raises(FlashdecodeError, match="neither a video file nor a folder"):
        list_videos("missing_folder/")


def test_video_clips_are_seeded_and_respect_the_holdout():
    ds = VideoClips([CLIP], frames=5, size=(32, 32), num_clips=12, seed=3, holdout=[f"{CLIP.name}:8-"])
    again = VideoClips([CLIP], frames=5, size=(32, 32), num_clips=12, seed=3, holdout=[f"{CLIP.name}:8-"])
    other = VideoClips([CLIP], frames=5, size=(32, 32), num_clips=12, seed=4, holdout=[f"{CLIP.name}:8-"])
    specs = [ds.spec(i) for i in range(len(ds))]
    assert specs == [again.spec(i) for i in range(12)] and specs != [other.spec(i) for i in range(12)]
    assert all(0 <= s.start <= 3 for s in specs)  # clips end before the held-out frame 8
    assert len({s.box for s in specs}) > 1 and {s.flip for s in specs} == {True, False}
    for s in specs:  # boxes fit the frame and keep the 1:1 aspect; no upscaling below 32 px
        top, left, h, w = s.box
        assert h == w and 32 <= h <= 144 and top + h <= 144 and left + w <= 176
    clip = ds[0]
    assert clip.shape == (3, 5, 32, 32) and torch.equal(clip, again[0])
    assert ds.key() == again.key() != other.key()


def test_video_clips_errors():
    with pytest.raises(FlashdecodeError, match="multiple of 16"):
        VideoClips([CLIP], frames=5, size=(30, 32))
    with pytest.raises(FlashdecodeError, match="4k\\+1"):
        VideoClips([CLIP], frames=6, size=(32, 32))
    with pytest.raises(FlashdecodeError, match="outside the held-out"):
        VideoClips([CLIP], frames=9, size=(32, 32), holdout=[f"{CLIP.name}:5-"])


def test_eval_clips_are_deterministic():
    (name, clip), = eval_clips([f"{CLIP}:1-20"], size=(64, 64))
    assert name == f"{CLIP.name}:1-18" and clip.shape == (3, 17, 64, 64)  # the longest 4k+1 run of 19 frames
    assert torch.equal(clip, read_clip(CLIP, 1, 17, (64, 64)))
    rows = list(eval_clips([CLIP], frames=9, size=(32, 32), holdout=[f"{CLIP.name}:9-20"]))
    assert [n for n, _ in rows] == [f"{CLIP.name}:0-9", f"{CLIP.name}:20-29"]
    assert largest_4k1(33) == 33 and largest_4k1(32) == 29 and largest_4k1(0) == 0
