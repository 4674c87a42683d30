"""Writing decoded frames: MP4/MKV/WebM (PyAV), animated GIF/WebP/APNG previews (imageio), PNG sequences, .y4m,
or stdout (y4m, raw rgb24, fragmented MP4).

Frames arrive as uint8 chunks: rgb24 [k,H,W,3], or for the video encoders I420 [k,H*3/2,W] already
converted on the device (convert.py; `VideoWriter.input_format` says which a writer wants). A `VideoWriter`
hands them to its own thread through a bounded queue: the decoder never waits on the encoder unless the
encoder falls a few chunks behind, and then it does wait (back-pressure) instead of piling frames up.

What is on disk is playable at any moment: MP4/MOV are written as fragmented MP4 with a keyframe about
every second and each fragment flushed as it is made, and a frame decoded a second ago is on disk even if
the input has stalled (the writer then ends the segment: `_Fragments`); MKV/WebM close a cluster about every
second; PNG frames are renamed into place whole. Closing always flushes the encoder. If the disk fills (or a
file-size limit is hit), the file is cut back to its last complete fragment (or removed if none is left)
and `frames_written` is what the file holds; an output that received no frame is removed.
"""
from __future__ import annotations

import errno
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .errors import FlashdecodeError
from .mp4 import _Fragments, complete_fragments_size, mp4_finished  # noqa: F401 (complete_fragments_size: re-exported)
from .outputs import OutputLock, identity, lock_path

CONTAINERS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
# Animated previews, encoder by extension. libwebp (not libwebp_anim, which holds the whole animation until
# close) writes each frame as it comes; GIF gets its own 256-colour palette per frame.
PREVIEWS = {".gif": "gif", ".webp": "libwebp", ".apng": "apng"}
DEFAULT_CRF = {"libx264": 18, "libx265": 22, "libvpx-vp9": 30, "libaom-av1": 30, "libsvtav1": 30}
STDOUT_FORMATS = ("y4m", "raw", "mp4")
PRESETS = {"libx264": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                       "placebo"),
           "libx265": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                       "placebo")}
DEFAULT_PRESET = "veryfast"  # keeps pace with XL on an H200 (x264 376 fps at 720p on 16 cores; medium: 130)
# Playable at every keyframe, from a pipe too; negative_cts_offsets: the first frame at t = 0 despite B-frames
FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof+negative_cts_offsets"
KEYFRAME_SECONDS = 1.0  # one fragment (MP4) or cluster (MKV) a second of video
FLUSH_SECONDS = 1.0  # MP4/MOV: a frame decoded this long ago is put on disk, even if the input has stalled
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
PNG_PATTERN = re.compile(r"%0?(\d*)d")
QUEUE_CHUNKS = 4  # chunks in flight between decoder and encoder; each chunk is at most 4 frames


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 0..255, same shape and device."""
    return pixels.float().clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]."""
    return pixels.float() / 127.5 - 1


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """[..., 3, k, H, W] floats in [-1, 1] -> uint8 [..., k, H, W, 3] on the CPU.

    The conversion runs where the pixels are (the GPU), so a quarter of the bytes cross to the host.
    """
    return to_uint8(pixels).movedim(-4, -1).contiguous().cpu().numpy()


def output_kind(output: str) -> str:
    """'stdout', 'container', 'preview' (.gif/.webp/.apng), 'y4m', 'png' (a folder or a %d .png pattern);
    unknown extensions are an error."""
    if output == "-":
        return "stdout"
    path = Path(output)
    suffix = path.suffix.lower()
    if output.endswith(("/", os.sep)):  # a trailing slash says folder, whatever dots or % its name holds
        return "png"
    if "%" in path.name:
        if suffix != ".png":
            raise FlashdecodeError(f"output pattern {output!r} must end in .png (e.g. frames/%05d.png)")
        if len(PNG_PATTERN.findall(path.name.replace("%%", ""))) != 1 or path.name.replace("%%", "").count("%") != 1:
            raise FlashdecodeError(f"output pattern {output!r} needs exactly one frame number like %05d or %d "
                                   "(write a literal % as %%)")
        return "png"
    if suffix in CONTAINERS:
        return "container"
    if suffix in PREVIEWS:
        return "preview"
    if suffix == ".y4m":
        return "y4m"
    if suffix == ".png":
        raise FlashdecodeError(f"output {output!r} is a single .png; a video needs a pattern like frames/%05d.png "
                               "or a folder")
    if not suffix or path.is_dir():
        return "png"
    raise FlashdecodeError(f"unknown output extension {suffix!r} for {output}; use .mp4, .mkv, .mov, .webm, .y4m, "
                           ".gif, .webp, .apng (previews), a folder or a %05d.png pattern (PNG sequence), or '-' "
                           "for stdout")


def png_target(output: str) -> tuple[Path, str]:
    """(folder, file pattern) of a PNG output: frames/%05d.png -> (frames, %05d.png); frames/ -> (frames, %05d.png)."""
    path = Path(output)
    if "%" in path.name and not output.endswith(("/", os.sep)):
        return path.parent, path.name
    return path, "%05d.png"


def batch_output_name(output: str, index: int) -> str:
    """out.mp4 -> out_b0.mp4; frames/ -> frames_b0/; frames/%05d.png -> frames_b0/%05d.png."""
    path = Path(output)
    if output.endswith(("/", os.sep)):  # a folder said with its slash: still one after the _bN
        return str(path.with_name(f"{path.name}_b{index}")) + os.sep
    if "%" in path.name:
        if path.parent != Path("."):
            return str(path.parent.with_name(f"{path.parent.name}_b{index}") / path.name)
        return str(path.with_name(f"{path.stem}_b{index}{path.suffix}"))
    if output_kind(output) == "png":
        return str(path.with_name(f"{path.name}_b{index}"))
    return str(path.with_name(f"{path.stem}_b{index}{path.suffix}"))


CRF_RANGE = {"libx264": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63), "libaom-av1": (0, 63), "libsvtav1": (0, 63)}


def _check_codec(codec: str, preset: str | None = None, crf: int | None = None) -> None:
    import av

    try:
        kind = av.Codec(codec, "w").type
    except Exception:
        kind = None
    if kind != "video":
        what = f"is an {kind} encoder, not a video one" if kind else "is an unknown or unavailable video encoder"
        raise FlashdecodeError(f"--codec {codec!r} {what}; try libx264, libx265, libvpx-vp9, mpeg4 or ffv1 "
                               "(`ffmpeg -encoders` lists what your PyAV build has)")
    if crf is not None:
        if codec not in CRF_RANGE:
            raise FlashdecodeError(f"--crf applies to {', '.join(CRF_RANGE)}, not {codec!r}; drop --crf")
        lo, hi = CRF_RANGE[codec]
        if not lo <= crf <= hi:
            raise FlashdecodeError(f"--crf {crf} is out of range for {codec}: {lo} (best) to {hi}")
    if preset is not None:
        if codec not in PRESETS:
            raise FlashdecodeError(f"--preset applies to {' and '.join(PRESETS)}, not {codec!r}; drop --preset")
        if preset not in PRESETS[codec]:
            raise FlashdecodeError(f"unknown --preset {preset!r} for {codec}; choose one of {', '.join(PRESETS[codec])}")


FPS_RANGE = (0.01, 1000.0)  # what a video container's time base and a player handle sensibly


def check_fps(fps: float) -> None:
    import math

    lo, hi = FPS_RANGE
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and lo <= fps <= hi):
        raise FlashdecodeError(f"fps {fps} is not a usable frame rate; give a number between {lo:g} and {hi:g}")


def png_name_regex(pattern: str) -> re.Pattern:
    """The file names `pattern` (e.g. %05d.png) can write."""
    literal = pattern.replace("%%", "\0")
    m = PNG_PATTERN.search(literal)
    head, tail = (part.replace("\0", "%") for part in (literal[:m.start()], literal[m.end():]))
    return re.compile(re.escape(head) + r"\d{%d,}" % int(m.group(1) or 1) + re.escape(tail))


def png_frames(folder: Path, pattern: str) -> list[Path]:
    """The files in `folder` that `pattern` (e.g. %05d.png) could have written."""
    rx = png_name_regex(pattern)
    return sorted(p for p in folder.iterdir() if rx.fullmatch(p.name)) if folder.is_dir() else []


def written_paths(output: str) -> list[str]:
    """What an output writes, for checking it against other paths: the file, or a PNG sequence's folder; and the
    lock's sidecar beside it (flashdecode.outputs)."""
    if output == "-":
        return [output]
    folder = str(png_target(output)[0]) if output_kind(output) == "png" else output
    return [folder, str(lock_path(Path(folder)))]


def is_png_frame_of(path: Path, output: str) -> bool:
    """Whether a PNG sequence `output` could write a frame named `path` (e.g. --json frames/00003.png)."""
    if output == "-" or output_kind(output) != "png":
        return False
    folder, pattern = png_target(output)
    same_folder = identity(path.parent) == identity(folder)
    return same_folder and bool(png_name_regex(pattern).fullmatch(path.name))


class IncompleteOutput(OSError):
    """The file on disk is shorter than what was written to it (a failed final flush)."""


def count_video_frames(path) -> int:
    """Frames a reader finds in a video file (packets of its video stream, no decoding); 0 if unreadable."""
    import av

    try:
        with av.open(str(path)) as c:
            return sum(1 for p in c.demux(video=0) if p.size)
    except Exception:
        return 0


class _AVSink:
    """One PyAV container and video stream, created on the first frames (their size sets the stream's).

    A video encoder is fed yuv420p frames straight into its planes (no swscale in this thread) and its
    stream is tagged BT.709 limited range, the mapping convert.py uses; image2 (PNG) and y4m take rgb24.
    """

    def __init__(self, target, fmt: str | None, codec: str, fps: float, crf: int | None,
                 container_options: dict | None = None, preset: str | None = None, fragments: bool = False):
        import av

        self.target, self.fmt, self.codec, self.fps = target, fmt, codec, fps
        # Fragmented MP4/MOV: written through a _Fragments, in segments that flush() can end at any moment
        self.fragments = _Fragments(target) if fragments else None
        self.sent = 0  # frames handed to the encoder
        self.sent_at: list[tuple[int, float]] = []  # (first frame, when it was decoded) of each chunk not yet whole
        self.crf = crf if crf is not None else DEFAULT_CRF.get(codec)
        self.preset = preset or (DEFAULT_PRESET if codec in PRESETS else None)
        self.container_options = container_options or {}
        self.container = self.stream = None
        formats = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
        wanted = "rgb24" if codec == "png" else "yuv420p"
        self.pix_fmt = wanted if not formats or wanted in formats else formats[0]
        # y4m (rawvideo) stays rgb24 -> swscale as before: it cannot carry the colour tags
        self.input_format = "yuv420p" if self.pix_fmt == "yuv420p" and codec != "rawvideo" else "rgb24"

    def _codec_options(self) -> dict:
        options = {}
        if self.crf is not None and self.codec in DEFAULT_CRF:
            options["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                options["b"] = "0"  # constant quality: VP9 needs a zero bitrate for CRF to rule
        if self.preset is not None:
            options["preset"] = self.preset
        return {**options, **self.low_latency()}

    def probe(self, height: int, width: int) -> None:
        """Open the encoder alone at this frame size (ms), so a size it refuses (x264: 16384 px wide at most)
        is one line before decoding, not an error after the output file was created."""
        import av
        from fractions import Fraction

        if self.input_format != "yuv420p":
            return
        ctx = av.CodecContext.create(self.codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, self.pix_fmt
        ctx.time_base = 1 / Fraction(self.fps).limit_denominator(1001)
        ctx.framerate = Fraction(self.fps).limit_denominator(1001)
        ctx.options = self._codec_options()
        try:
            ctx.open()
        except av.FFmpegError as e:
            raise FlashdecodeError(f"the {self.codec} encoder cannot take {width}x{height} frames ({e.strerror}); "
                                   "decode a smaller latent grid, or pick another --codec (e.g. libvpx-vp9 in a "
                                   ".webm)") from None
        finally:
            del ctx

    def _open(self, height: int, width: int) -> None:
        import av
        from fractions import Fraction

        options = self._codec_options()
        container_options = dict(self.container_options)
        if self.fragments is not None and self.sent:  # a new segment: its fragments carry their own decode times
            self.fragments.new_segment()
            container_options["movflags"] += "+frag_discont"
        if self.fragments is not None and self.fragments.raw is not None and not self.fragments.raw.seekable():
            container_options["movflags"] += "+skip_trailer"  # a pipe: a segment's mfra could not be taken back
        target = self.fragments if self.fragments is not None else self.target
        self.container = av.open(target, "w", format=self.fmt, container_options=container_options)
        self.rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream(self.codec, rate=self.rate, options=options)
        self.stream.pix_fmt = self.pix_fmt
        self.stream.width, self.stream.height = width, height
        if self.input_format == "yuv420p":
            ctx = self.stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
            ctx.color_range = 1  # limited ("tv", "mpeg")
            ctx.gop_size = max(1, round(self.fps * KEYFRAME_SECONDS))  # a fragment/cluster a second
            self.stream.thread_type = "AUTO"  # frame threading: x264 keeps pace with the GPU

    def low_latency(self) -> dict:
        """Encoder options that keep decoded frames from waiting in the encoder (libvpx holds 25 by default)."""
        return {"lag-in-frames": "0"} if self.codec == "libvpx-vp9" else {}

    def write(self, frames: np.ndarray, fmt: str = "rgb24", decoded_at: float | None = None) -> None:
        import av

        if fmt == "rgb24" and self.input_format == "yuv420p":
            from .convert import rgb24_to_i420

            frames, fmt = rgb24_to_i420(frames), "yuv420p"  # the same BT.709 mapping as on the device
        if self.container is None:
            self._open(*((frames.shape[1] * 2 // 3, frames.shape[2]) if fmt == "yuv420p" else frames.shape[1:3]))
        if self.fragments is not None:
            self.sent_at.append((self.sent, time.monotonic() if decoded_at is None else decoded_at))
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format=fmt)
            if fmt == "yuv420p":
                frame.colorspace, frame.color_range = 1, 1
            frame.pts, frame.time_base = self.sent, 1 / self.rate  # frame numbers, continuous across segments
            self.sent += 1
            try:
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
            except Exception:
                if self.fragments is not None and self.fragments.error is not None:
                    raise self.fragments.error from None  # the failed write itself (ENOSPC, EFBIG)
                raise

    def flush_due(self) -> float | None:
        """When the oldest frame not yet whole on disk was decoded (monotonic seconds), or None."""
        if self.fragments is None or self.container is None:
            return None
        whole = self.fragments.whole_frames
        while len(self.sent_at) > 1 and self.sent_at[1][0] <= whole:
            self.sent_at.pop(0)
        return self.sent_at[0][1] if self.sent_at and whole < self.sent else None

    def flush(self) -> None:
        """End the segment: every frame so far whole on disk; the next frames start a new segment."""
        self._finish()
        self.sent_at.clear()

    def _finish(self) -> None:
        if self.container is None:
            return
        container, self.container = self.container, None  # closing twice is a no-op
        try:
            for packet in self.stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        finally:
            container.close()
        if self.fragments is not None and self.fragments.error is not None:
            raise self.fragments.error  # a write PyAV saw fail (a full disk): the real error, not PyAV's

    def close(self) -> None:
        try:
            self._finish()
        finally:
            if self.fragments is not None:
                self.fragments.close()


class _PreviewSink:
    """An animated GIF, WebP or APNG, looping forever, through imageio's pyav plugin.

    Each frame is encoded and written out as it arrives, so memory stays flat in the clip's length
    (imageio's pillow plugin would keep every frame until close). GIF frames go through ffmpeg's
    palettegen/paletteuse, a palette per frame: smooth gradients instead of a fixed 3-3-2 palette's banding.
    """

    input_format = "rgb24"
    LOOP_FOREVER = {"gif": {"loop": "0"}, "webp": {"loop": "0"}, "apng": {"plays": "0"}}

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.file = path, fps, None
        self.codec = PREVIEWS[path.suffix.lower()]

    def _open(self, height: int, width: int) -> None:
        import imageio.v3 as iio

        muxer = {"gif": "gif", "libwebp": "webp", "apng": "apng"}[self.codec]
        self.file = iio.imopen(self.path, "w", plugin="pyav", extension=self.path.suffix.lower(), container=muxer,
                               container_options=self.LOOP_FOREVER[muxer])
        self.file.init_video_stream(self.codec, fps=self.fps, pixel_format="yuv420p" if self.codec == "libwebp" else "rgb24")
        if self.codec == "gif":
            stream = self.file._video_stream  # the filter's input is sized from the stream: size it first
            stream.width, stream.height = width, height
            self.file.set_video_filter(filter_graph=(
                {"split": ("split", ""), "palette": ("palettegen", "stats_mode=single"),
                 "use": ("paletteuse", "new=1")},
                [("video_in", "split", 0, 0), ("split", "palette", 0, 0), ("split", "use", 1, 0),
                 ("palette", "use", 0, 1), ("use", "video_out", 0, 0)]))
            stream.pix_fmt = "pal8"  # what paletteuse makes and the GIF encoder takes

    def write(self, frames: np.ndarray, fmt: str = "rgb24", decoded_at: float | None = None) -> None:
        if self.file is None:
            self._open(*frames.shape[1:3])
        for f in frames:
            self.file.write_frame(f)

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            file.close()  # flushes the filter and the encoder, writes the trailer


class _PngSink:
    """A PNG sequence: each frame is encoded, written under a hidden temporary name in the folder, then renamed
    into place, so a frame file that exists is whole whatever stops the run (a full disk, kill -9).

    `frames` counts the files in place: after a failed write it is what the folder holds.
    """

    input_format = "rgb24"

    def __init__(self, folder: Path, pattern: str):
        self.folder, self.pattern, self.frames, self.encoder = folder, pattern, 0, None

    def _encode(self, frame: np.ndarray) -> bytes:
        import av
        from fractions import Fraction

        if self.encoder is None:
            self.encoder = av.CodecContext.create("png", "w")
            self.encoder.width, self.encoder.height = frame.shape[1], frame.shape[0]
            self.encoder.pix_fmt, self.encoder.time_base = "rgb24", Fraction(1, 1)
        return b"".join(bytes(p) for p in self.encoder.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))

    def write(self, frames: np.ndarray, fmt: str = "rgb24", decoded_at: float | None = None) -> None:
        for frame in frames:
            path = self.folder / (self.pattern % self.frames)
            part = path.with_name(f".{path.name}.part")
            try:
                with open(part, "wb") as f:
                    f.write(self._encode(frame))
                os.replace(part, path)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            self.frames += 1

    def close(self) -> None:
        pass


class _RawSink:
    """rgb24 bytes, frame after frame, no header (ffmpeg: -f rawvideo -pix_fmt rgb24 -s WxH)."""

    input_format = "rgb24"

    def __init__(self, fp):
        self.fp = fp

    def write(self, frames: np.ndarray, fmt: str = "rgb24", decoded_at: float | None = None) -> None:
        self.fp.write(np.ascontiguousarray(frames).data)

    def close(self) -> None:
        pass


def _stdout_binary():
    """Unbuffered binary stdout, so a downstream reader sees each frame as soon as it is encoded."""
    if sys.stdout is None:
        raise FlashdecodeError("stdout is closed; pass -o FILE")
    try:
        fd = sys.stdout.fileno()
        is_tty = sys.stdout.isatty()
    except (OSError, ValueError):
        raise FlashdecodeError("stdout is closed; pass -o FILE") from None
    if is_tty:
        raise FlashdecodeError("refusing to write binary video to a terminal; redirect stdout "
                               "(e.g. `| ffplay -`) or pass -o FILE")
    sys.stdout.flush()
    return open(fd, "wb", buffering=0, closefd=False)


def is_disk_error(e: BaseException | None) -> bool:
    """A full disk, quota or file-size limit (RLIMIT_FSIZE)."""
    return isinstance(e, IncompleteOutput) or isinstance(e, OSError) and e.errno in DISK_ERRNOS


class VideoWriter:
    """Write uint8 chunks to `output` on a background thread fed through a bounded queue.

    output: '-' (stdout, `stdout_format` y4m|raw|mp4), *.mp4/.mkv/.mov/.webm, *.gif/.webp/.apng (animated
    previews), *.y4m, a folder or a %05d.png pattern. The output is checked (and created) here, before any
    decoding; `close()` flushes.
    A PNG folder that already holds frames of the pattern is refused unless `overwrite` (then they are
    deleted once this run's first frames are on disk), so two runs never mix. The output is locked
    (flashdecode.outputs.OutputLock) until close: a second writer on it is refused. `preset`: the x264/x265
    speed preset (default veryfast).
    """

    def __init__(self, output: str, fps: float = 16.0, crf: int | None = None, codec: str | None = None,
                 stdout_format: str = "y4m", queue_chunks: int = QUEUE_CHUNKS, preset: str | None = None,
                 overwrite: bool = False):
        self.output = output
        self.kind = output_kind(output)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (height, width) of the first frames
        self._created: list[Path] = []  # what to remove again if no frame ever arrives
        self._error: BaseException | None = None
        self._error_reported = False
        self._closed = False
        self._lock: OutputLock | None = None  # no second writer on this output (flashdecode.outputs)
        self._stale: list[Path] = []  # --overwrite: an earlier run's PNG frames, removed after our first ones
        try:
            self.sink = self._make_sink(output, fps, crf, codec, stdout_format, preset, overwrite)
        except BaseException:
            self._release_lock()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._thread = threading.Thread(target=self._run, name="flashdecode-writer", daemon=True)
        self._thread.start()

    def check_frame_size(self, height: int, width: int) -> None:
        """FlashdecodeError now if the encoder cannot take height x width frames (see _AVSink.probe)."""
        if isinstance(self.sink, _AVSink):
            self.sink.probe(height, width)

    @property
    def input_format(self) -> str:
        """'yuv420p' (I420 [k,H*3/2,W], converted on the device) or 'rgb24' ([k,H,W,3]): what to hand write()."""
        return self.sink.input_format

    # -- set-up: everything that can fail because of the output happens here, before decoding ----------

    def _make_sink(self, output: str, fps: float, crf, codec, stdout_format, preset, overwrite):
        check_fps(fps)
        if self.kind == "stdout":
            if stdout_format not in STDOUT_FORMATS:
                raise FlashdecodeError(f"unknown stdout format {stdout_format!r}; choose {', '.join(STDOUT_FORMATS)}")
            if stdout_format == "mp4":
                codec = codec or "libx264"
                _check_codec(codec, preset, crf)
            fp = _stdout_binary()
            if stdout_format == "raw":
                return _RawSink(fp)
            if stdout_format == "y4m":
                return _AVSink(fp, "yuv4mpegpipe", "rawvideo", fps, None)
            return _AVSink(fp, "mp4", codec, fps, crf, {"movflags": FRAGMENTED_MP4, "flush_packets": "1"}, preset,
                           fragments=True)
        path = Path(output)
        if self.kind == "png":
            folder, pattern = png_target(output)
            stale = png_frames(folder, pattern)
            if stale and not overwrite:
                raise FlashdecodeError(f"output folder {folder} already holds {len(stale)} frames named like "
                                       f"{pattern} ({stale[0].name}, ...); pass --overwrite (-y) to replace them, "
                                       "or pick an empty folder")
            self._make_folder(folder)
            try:
                self._lock = OutputLock(folder)
            except FlashdecodeError:
                self._remove_created()
                raise
            self._png = (folder, pattern)
            # --overwrite: the old run's frames go once this run's first frames are on disk (_drop_stale), so a
            # run that fails before then leaves them as they were
            self._stale = png_frames(folder, pattern)
            return _PngSink(folder, pattern)
        if self.kind == "preview":
            given = [name for name, v in (("--codec", codec), ("--crf", crf), ("--preset", preset)) if v is not None]
            if given:
                raise FlashdecodeError(f"{' and '.join(given)} apply to video files, not the {path.suffix} preview "
                                       f"{path}; a preview takes --scale and --fps")
            self._lock = OutputLock(path)
            self._touch(path)
            return _PreviewSink(path, fps)
        if self.kind == "y4m":
            self._lock = OutputLock(path)
            self._touch(path)
            return _AVSink(str(path), "yuv4mpegpipe", "rawvideo", fps, None, {"flush_packets": "1"})
        codec = codec or CONTAINERS[path.suffix.lower()]
        _check_codec(codec, preset, crf)
        self._lock = OutputLock(path)
        self._touch(path)
        # Playable at any moment: fragmented MP4, or a Matroska cluster a second; each written out at once.
        mp4 = path.suffix.lower() in (".mp4", ".mov")
        options = {"movflags": FRAGMENTED_MP4} if mp4 else {"cluster_time_limit": str(int(KEYFRAME_SECONDS * 1000))}
        options["flush_packets"] = "1"
        fmt = {".mp4": "mp4", ".mov": "mov"}.get(path.suffix.lower())
        return _AVSink(str(path), fmt, codec, fps, crf, options, preset, fragments=mp4)

    def _touch(self, path: Path) -> None:
        """Try writing the file now: an unwritable output fails before any decoding, not after it.

        A new file is created and removed again: the encoder makes it with the first frames, so no empty
        (unplayable) file ever sits under the name, even if the process is killed before then.
        """
        if path.is_dir():
            raise FlashdecodeError(f"output {path} is a directory; give a file name like {path / 'video.mp4'}")
        existed = path.exists()
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise FlashdecodeError(f"cannot write output {path}: {e.strerror or e}; "
                                   "pick a writable location with -o") from None
        if not existed:
            path.unlink()
            self._created.append(path)

    def _make_folder(self, folder: Path) -> None:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlashdecodeError(f"cannot create output folder {folder}: {e.strerror or e}; "
                                   "pick a writable location with -o") from None
        if not os.access(folder, os.W_OK):
            raise FlashdecodeError(f"output folder {folder} is not writable; pick another with -o")
        self._created.extend(missing)  # innermost first, so removal works outwards

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            due = self.sink.flush_due() if self._error is None and hasattr(self.sink, "flush_due") else None
            wait = None if due is None else due + FLUSH_SECONDS - time.monotonic()
            if wait is not None and wait <= 0:  # a frame decoded FLUSH_SECONDS ago is not on disk yet: put it there
                self._flush()
                continue
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:  # the input is idle (a stalled producer): what was decoded goes to disk now
                self._flush()
                continue
            if item is None:
                break
            frames, fmt, ready, done, decoded_at = item
            try:
                if self._error is None:  # else keep draining so the producer never blocks on a dead writer
                    ready()
                    self.sink.write(frames, fmt, decoded_at)
                    self.frames_written += len(frames)
                    if self._stale:
                        self._drop_stale()
            except BaseException as e:  # handed to the decoding thread on its next write()/close()
                self._error = e
            finally:
                done()

    def _flush(self) -> None:
        try:
            self.sink.flush()
        except BaseException as e:
            self._error = e

    def write(self, frames: np.ndarray, fmt: str = "rgb24", ready=None, done=None) -> None:
        """Queue uint8 frames, rgb24 [k,H,W,3] or yuv420p [k,H*3/2,W]; blocks while the queue is full.

        `ready()` (if given) runs on the writer thread before the frames are read (a CUDA copy's event),
        `done()` once they are no longer needed (the host buffer may be reused).
        """
        self._raise_pending()
        shape_ok = frames.ndim == 4 and frames.shape[-1] == 3 if fmt == "rgb24" else \
            frames.ndim == 3 and frames.shape[1] % 3 == 0 and fmt == "yuv420p"
        if frames.dtype != np.uint8 or not shape_ok:
            raise ValueError(f"frames must be uint8 rgb24 [k,H,W,3] or yuv420p [k,H*3/2,W], got {fmt} "
                             f"{frames.dtype} {list(frames.shape)}")
        if self.size is None:
            self.size = (frames.shape[1] * 2 // 3, frames.shape[2]) if fmt == "yuv420p" else frames.shape[1:3]
        self._queue.put((frames, fmt, ready or _nothing, done or _nothing, time.monotonic()))

    def _raise_pending(self) -> None:
        if self._error is not None and not self._error_reported:
            self._error_reported = True
            raise self._error

    def close(self) -> None:
        """Finish the queued frames, flush the encoder, close the file; remove it if no frame arrived.

        After a full disk the file is cut back to what a reader can play, and frames_written recounted.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        try:
            self.sink.close()
        except Exception as e:  # a broken pipe already reported by write() also breaks the final flush
            if self._error is None:
                self._error = e
        path = Path(self.output)
        if self._error is None and self.frames_written and self.kind == "container" and isinstance(self.sink, _AVSink) \
                and path.suffix.lower() in (".mp4", ".mov") and not mp4_finished(path):
            self._error = IncompleteOutput(errno.EIO, "its last frames did not reach the disk")
        if is_disk_error(self._error) and self.kind in ("container", "y4m"):
            self._salvage(Path(self.output))
        fragments = getattr(self.sink, "fragments", None)
        if is_disk_error(self._error) and self.kind == "stdout" and fragments is not None:
            fragments.cut_to_whole()  # a file behind stdout (> out.mp4) is cut back; a pipe's reader has the rest
            self.frames_written = min(self.frames_written, fragments.whole_frames)
        if self.kind == "png":  # the frames renamed into place, even if a failure cut a chunk short
            self.frames_written = self.sink.frames
        self._release_lock()  # before removing what was created: the sidecar sits in a folder that may go
        if self.frames_written == 0:
            self._remove_created()
        self._raise_pending()

    def _drop_stale(self) -> None:
        """--overwrite: this run's first frames are on disk, so the earlier run's frames that remain can go."""
        folder, pattern = self._png
        ours = {pattern % i for i in range(self.frames_written)}
        for p in self._stale:
            if p.name not in ours:
                p.unlink(missing_ok=True)
        self._stale = []

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _salvage(self, path: Path) -> None:
        """Keep the complete fragments of a file cut short by a full disk; remove it if none is playable."""
        fragments = getattr(self.sink, "fragments", None)
        try:
            if fragments is not None:  # MP4/MOV: every byte passed through it, so it knows what is whole on disk
                if fragments.start + fragments.whole_bytes < os.path.getsize(path):
                    os.truncate(path, fragments.start + fragments.whole_bytes)  # by path: close() shut its file
                self.frames_written = min(self.frames_written, fragments.whole_frames)
            else:
                self.frames_written = min(self.frames_written, count_video_frames(path))
        except OSError:
            self.frames_written = 0
        if self.frames_written == 0 and path not in self._created:
            self._created.append(path)  # unplayable: it goes, whether or not it was there before

    def _remove_created(self) -> None:
        for p in self._created:
            try:
                p.unlink() if p.is_file() else p.rmdir()
            except OSError:
                pass  # not empty or already gone: leave it
        self._created = []

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _nothing() -> None:
    pass
