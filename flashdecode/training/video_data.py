"""Real video in, model-ready pixel clips out: float [3, T, H, W] in [-1, 1], T = 4k+1, H and W multiples of 16.

PyAV decodes anything FFmpeg reads. Only the frames a clip needs are decoded: we seek to the keyframe
before the clip and skip forward. A source may name a frame range, "clip.mp4:199-280" (end exclusive,
either end may be left out), so a held-out part of a clip is one string both for training (`holdout=`)
and for evaluation (`eval_clips`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FlashdecodeError

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".y4m", ".gif", ".flv", ".wmv"}


# ----------------------------------------------------------------------------------------- probing and decoding

@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    fps: float
    height: int
    width: int


def _open(path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise FlashdecodeError(f"video {path} does not exist; check the path")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise FlashdecodeError(f"{path} is not a video PyAV/FFmpeg can read ({e.strerror or e}); pass an .mp4/.mkv/.webm file") from None
    if not container.streams.video:
        container.close()
        raise FlashdecodeError(f"{path} has no video stream; pass a video file")
    return container


def probe(path) -> VideoInfo:
    """Frame count, fps and size of the first video stream. Counts packets when the container has no count."""
    with _open(path) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        if frames <= 0:  # mkv, webm, y4m...: demuxing (no decoding) is cheap
            frames = sum(1 for p in container.demux(stream) if p.size)
        rate = stream.average_rate or stream.guessed_rate or 0
        return VideoInfo(Path(path), frames, float(rate), stream.height, stream.width)


def iter_frames(path, start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
    """Decode frames start .. start+count-1 (all to the end when count is None) as uint8 [H, W, 3] RGB."""
    return itertools.islice(_frames_from(path, start), max(count, 0) if count is not None else None)


def _frames_from(path, start: int) -> Iterator[np.ndarray]:
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, base, t0 = stream.average_rate or stream.guessed_rate, stream.time_base, stream.start_time or 0
        index = 0
        if start > 0 and rate and base:
            # Jump to the keyframe at or before `start`; the landing frame's timestamp gives its index (time * fps).
            container.seek(t0 + int(start / Fraction(rate) / base), stream=stream, backward=True)
            frames = container.decode(stream)
            first = next(frames, None)
            index = round(float((first.pts - t0) * base * rate)) if first is not None and first.pts is not None else -1
            if not 0 <= index <= start:  # no timestamps, or the seek overshot: count frames from the start instead
                yield from itertools.islice(_frames_from(path, 0), start, None)
                return
            frames = itertools.chain([first], frames)
        else:
            frames = container.decode(stream)
        for frame in frames:
            if index >= start:
                yield frame.to_ndarray(format="rgb24")
            index += 1


def read_frames(path, start: int = 0, count: int | None = None) -> torch.Tensor:
    """uint8 [T, H, W, 3]; raises FlashdecodeError if the video has fewer than `count` frames from `start`."""
    frames = list(iter_frames(path, start, count))
    if not frames or (count is not None and len(frames) < count):
        raise FlashdecodeError(f"{path} has only {len(frames)} frames from frame {start}, {count} needed; "
                               "use fewer frames or an earlier start")
    return torch.from_numpy(np.stack(frames))


# ----------------------------------------------------------------------------------------- crop and resize

def center_box(src_h: int, src_w: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The largest centered (top, left, height, width) box with the aspect ratio h:w."""
    scale = min(src_h / h, src_w / w)
    bh, bw = min(src_h, max(1, round(h * scale))), min(src_w, max(1, round(w * scale)))  # a sliver, never empty
    return (src_h - bh) // 2, (src_w - bw) // 2, bh, bw


def to_clip(frames: torch.Tensor, size: tuple[int, int] | None = None, box=None, flip: bool = False) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, h, w] in [-1, 1]: crop `box` (top, left, height, width), resize to `size`.

    box "center" (default when resizing) keeps the aspect ratio; box None with a size stretches the whole frame.
    """
    if isinstance(box, str):
        if box != "center":
            raise ValueError(f"unknown crop {box!r}; use 'center', None or (top, left, height, width)")
        box = center_box(frames.shape[1], frames.shape[2], *size) if size else None
    if box is not None:
        top, left, bh, bw = box
        frames = frames[:, top:top + bh, left:left + bw]
    x = frames.permute(0, 3, 1, 2).float()  # [T, 3, H, W], 0..255
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        # Antialiased bilinear: downscaling without aliasing, upscaling like plain bilinear.
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        x = x.flip(-1)
    return (x / 127.5 - 1).clamp_(-1, 1).permute(1, 0, 2, 3).contiguous()


def read_clip(path, start: int = 0, frames: int | None = None, size: tuple[int, int] | None = None,
              crop="center", flip: bool = False) -> torch.Tensor:
    """Frames start .. start+frames-1 of a video as float [3, T, H, W] in [-1, 1].

    size=(H, W) resizes (None keeps the video's size); crop is "center" (largest centered box with the
    target aspect ratio, then resize), None (stretch the whole frame) or (top, left, height, width) in source pixels.
    """
    return to_clip(read_frames(path, start, frames), size, crop if size is not None or not isinstance(crop, str) else None, flip)


# ----------------------------------------------------------------------------------------- sources and hold-outs

@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of one video."""
    path: Path
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.path.name}:{self.start}-{self.end}"


_RANGE = re.compile(r"^(\d*)-(\d*)$")


def parse_source(spec) -> tuple[str, int, int | None]:
    """'clip.mp4' -> ('clip.mp4', 0, None); 'clip.mp4:199-280' -> ('clip.mp4', 199, 280); end exclusive."""
    spec = str(spec)
    name, _, rng = spec.rpartition(":")
    m = _RANGE.match(rng) if name else None
    if not m:
        return spec, 0, None
    return name, int(m.group(1) or 0), int(m.group(2)) if m.group(2) else None


def list_videos(sources) -> list[Path]:
    """Video files from a folder (recursively, by extension), a file, or a list of either (ranges stripped)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files = []
    for spec in sources:
        path = Path(parse_source(spec)[0])
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FlashdecodeError(f"{path} is neither a video file nor a folder; check the path")
    if not files:
        raise FlashdecodeError(f"no videos found in {', '.join(map(str, sources))}; "
                               f"expected files ending in {', '.join(sorted(VIDEO_EXTENSIONS))}")
    return list(dict.fromkeys(files))


def _matches(path: Path, name: str) -> bool:
    return path.name == name or path.resolve() == Path(name).resolve()


def segments(sources, holdout: Sequence[str] = ()) -> list[Segment]:
    """The frame ranges of `sources` left after removing every `holdout` ("file" or "file:start-end")."""
    if isinstance(holdout, str):
        holdout = [holdout]
    if isinstance(sources, (str, Path)):
        sources = [sources]
    result = []
    held = [parse_source(h) for h in holdout]
    for spec in sources:
        name, start, end = parse_source(spec)
        for path in list_videos([name]):
            total = probe(path).frames
            pieces = [(start, min(end, total) if end is not None else total)]
            for h_name, h_start, h_end in held:
                if _matches(path, h_name):
                    h_end = total if h_end is None else h_end
                    pieces = [p for a, b in pieces for p in ((a, min(b, h_start)), (max(a, h_end), b))]
            result += [Segment(path, a, b) for a, b in pieces if b > a]
    return result


# ----------------------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one training clip: decoding it twice gives the same pixels."""
    path: Path
    start: int
    box: tuple[int, int, int, int]
    flip: bool

    def __str__(self) -> str:
        return f"{self.path.name}:{self.start} box={list(self.box)}{' flip' if self.flip else ''}"


def check_shape(frames: int, size: tuple[int, int]) -> None:
    if frames < 1 or (frames - 1) % 4:
        raise FlashdecodeError(f"{frames} frames is not 4k+1 (1, 5, 9, 13, 17, ...); pick a 4k+1 frame count")
    if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
        raise FlashdecodeError(f"size {size[0]}x{size[1]} is not a multiple of 16; pick e.g. 256x256")


class VideoClips(torch.utils.data.Dataset):
    """`num_clips` random clips (random start, crop box, scale, flip) from videos; clip i is fixed by (seed, i).

    Each clip is float [3, frames, H, W] in [-1, 1]. The crop box has the target aspect ratio and a side
    between the target size (a native-resolution crop, when the video is big enough) and the whole frame
    (a full downscale); `scale` narrows that range (fractions of the whole-frame box side). Use a new `seed`
    per epoch for fresh clips, or a fixed seed with `LatentCache` to encode a fixed set once.
    Decoded videos are kept in memory (uint8) while their total stays under `cache_mb`.
    """

    def __init__(self, sources, frames: int = 17, size: tuple[int, int] = (256, 256), num_clips: int = 1024,
                 seed: int = 0, scale: tuple[float, float] = (0.0, 1.0), flip: bool = True,
                 holdout: Sequence[str] = (), cache_mb: float = 256):
        check_shape(frames, size)
        self.frames, self.size, self.num_clips, self.seed = frames, tuple(size), num_clips, seed
        self.scale, self.flip, self.holdout = tuple(scale), flip, tuple([holdout] if isinstance(holdout, str) else holdout)
        self.segments = [s for s in segments(sources, self.holdout) if s.frames >= frames]
        if not self.segments:
            raise FlashdecodeError(f"no video in {sources} has {frames} frames outside the held-out parts; "
                                   "use fewer frames or more videos")
        self.infos = {s.path: probe(s.path) for s in self.segments}
        self.cache_mb = cache_mb
        self._cache: dict[Path, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.num_clips

    def spec(self, i: int) -> ClipSpec:
        if not 0 <= i < self.num_clips:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        rand = lambda: torch.rand((), generator=g).item()  # noqa: E731
        # A segment with more valid starts is drawn more often, so every start is equally likely.
        starts = [s.frames - self.frames + 1 for s in self.segments]
        pick = rand() * sum(starts)
        k = next((k for k, c in enumerate(np.cumsum(starts)) if pick < c), len(starts) - 1)
        seg = self.segments[k]
        start = seg.start + min(int(rand() * starts[k]), starts[k] - 1)
        info = self.infos[seg.path]
        h, w = self.size
        _, _, max_h, max_w = center_box(info.height, info.width, h, w)
        lo = max(self.scale[0], min(1.0, h / max_h))  # no upscaling when a native crop fits
        hi = max(lo, min(self.scale[1], 1.0))
        s = lo + rand() * (hi - lo)
        bh, bw = max(1, round(max_h * s)), max(1, round(max_w * s))
        top = int(rand() * (info.height - bh + 1))
        left = int(rand() * (info.width - bw + 1))
        return ClipSpec(seg.path, start, (top, left, bh, bw), self.flip and rand() < 0.5)

    def _frames(self, path: Path, start: int) -> torch.Tensor:
        if path not in self._cache:
            info = self.infos[path]
            used = sum(v.numel() for v in self._cache.values())
            if (used + info.frames * info.height * info.width * 3) / 2**20 <= self.cache_mb:
                self._cache[path] = read_frames(path)
        if path in self._cache:
            return self._cache[path][start:start + self.frames]
        return read_frames(path, start, self.frames)

    def __getitem__(self, i: int) -> torch.Tensor:
        spec = self.spec(i)
        return to_clip(self._frames(spec.path, spec.start), self.size, spec.box, spec.flip)

    def fingerprint(self) -> dict:
        """What determines the clips: changing any of it (or a source file) gives different clips."""
        files = sorted({s.path for s in self.segments})
        return {
            "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
            "segments": [str(s) for s in self.segments],
            "frames": self.frames, "size": list(self.size), "num_clips": self.num_clips, "seed": self.seed,
            "scale": list(self.scale), "flip": self.flip,
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def eval_clips(sources, frames: int | None = None, size: tuple[int, int] | None = (256, 256),
               holdout: Sequence[str] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """Deterministic evaluation clips: for each source (a file, folder or "file:start-end") the first `frames`
    frames (default: the longest 4k+1 run it has), center-cropped and resized to `size`.

    Yields (name, clip [3, T, H, W] in [-1, 1]); name is "file:start-end".
    """
    for seg in segments(sources, holdout):
        n = frames if frames is not None else 1 + 4 * ((seg.frames - 1) // 4)
        if seg.frames < n or n < 1:
            continue
        clip = read_clip(seg.path, seg.start, n, size)
        yield str(Segment(seg.path, seg.start, seg.start + n)), clip


def largest_4k1(n: int) -> int:
    """The largest 4k+1 <= n (0 when n < 1)."""
    return 1 + 4 * ((n - 1) // 4) if n >= 1 else 0


def round_down_16(h: int, w: int) -> tuple[int, int]:
    return h - h % 16, w - w % 16


__all__ = [
    "VideoInfo", "probe", "iter_frames", "read_frames", "center_box", "to_clip", "read_clip", "Segment",
    "parse_source", "list_videos", "segments", "ClipSpec", "check_shape", "VideoClips", "eval_clips",
    "largest_4k1", "round_down_16",
]
