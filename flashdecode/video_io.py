"""Writing decoded frames: MP4/MKV/WebM (PyAV), PNG sequences, .y4m, or stdout (y4m, raw rgb24, fragmented MP4).

Frames arrive as uint8 [k,H,W,3] chunks. A `VideoWriter` hands them to its own thread through a bounded
queue: the decoder never waits on the encoder unless the encoder falls a few chunks behind, and then it
does wait (back-pressure) instead of piling frames up in memory. Closing always flushes the encoder, so
whatever was written is a playable file; an output that received no frame is removed.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from .errors import FlashdecodeError

CONTAINERS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
DEFAULT_CRF = {"libx264": 18, "libx265": 22, "libvpx-vp9": 30, "libaom-av1": 30, "libsvtav1": 30}
STDOUT_FORMATS = ("y4m", "raw", "mp4")
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
    """'stdout', 'container', 'y4m', 'png' (a folder or a %d .png pattern); unknown extensions are an error."""
    if output == "-":
        return "stdout"
    path = Path(output)
    suffix = path.suffix.lower()
    if "%" in path.name:
        if suffix != ".png":
            raise FlashdecodeError(f"output pattern {output!r} must end in .png (e.g. frames/%05d.png)")
        return "png"
    if suffix in CONTAINERS:
        return "container"
    if suffix == ".y4m":
        return "y4m"
    if suffix == ".png":
        raise FlashdecodeError(f"output {output!r} is a single .png; a video needs a pattern like frames/%05d.png "
                               "or a folder")
    if not suffix or path.is_dir():
        return "png"
    raise FlashdecodeError(f"unknown output extension {suffix!r} for {output}; use .mp4, .mkv, .mov, .webm, .y4m, "
                           "a folder or a %05d.png pattern (PNG sequence), or '-' for stdout")


def batch_output_name(output: str, index: int) -> str:
    """out.mp4 -> out_b0.mp4; frames/ -> frames_b0/; frames/%05d.png -> frames_b0/%05d.png."""
    path = Path(output)
    if "%" in path.name:
        if path.parent != Path("."):
            return str(path.parent.with_name(f"{path.parent.name}_b{index}") / path.name)
        return str(path.with_name(f"{path.stem}_b{index}{path.suffix}"))
    if output_kind(output) == "png":
        return str(path.with_name(f"{path.name}_b{index}"))
    return str(path.with_name(f"{path.stem}_b{index}{path.suffix}"))


def _check_codec(codec: str) -> None:
    import av

    try:
        av.Codec(codec, "w")
    except Exception:
        raise FlashdecodeError(f"unknown or unavailable video encoder {codec!r}; try libx264, libx265, libvpx-vp9, "
                               "mpeg4 or ffv1 (`ffmpeg -encoders` lists what your PyAV build has)") from None


class _AVSink:
    """One PyAV container and video stream, created on the first frames (their size sets the stream's)."""

    def __init__(self, target, fmt: str | None, codec: str, fps: float, crf: int | None,
                 container_options: dict | None = None):
        self.target, self.fmt, self.codec, self.fps = target, fmt, codec, fps
        self.crf = crf if crf is not None else DEFAULT_CRF.get(codec)
        self.container_options = container_options or {}
        self.container = self.stream = None

    def _open(self, height: int, width: int) -> None:
        import av
        from fractions import Fraction

        options = {}
        if self.crf is not None and self.codec in DEFAULT_CRF:
            options["crf"] = str(self.crf)
            if self.codec == "libvpx-vp9":
                options["b"] = "0"  # constant quality: VP9 needs a zero bitrate for CRF to rule
        self.container = av.open(self.target, "w", format=self.fmt, container_options=self.container_options)
        self.stream = self.container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001),
                                                options=options)
        formats = [f.name for f in (av.Codec(self.codec, "w").video_formats or [])]
        pix_fmt = "rgb24" if self.codec == "png" else "yuv420p"
        self.stream.pix_fmt = pix_fmt if not formats or pix_fmt in formats else formats[0]
        self.stream.width, self.stream.height = width, height

    def write(self, frames: np.ndarray) -> None:
        import av

        if self.container is None:
            self._open(*frames.shape[1:3])
        for rgb in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        container, self.container = self.container, None  # closing twice is a no-op
        try:
            for packet in self.stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        finally:
            container.close()


class _RawSink:
    """rgb24 bytes, frame after frame, no header (ffmpeg: -f rawvideo -pix_fmt rgb24 -s WxH)."""

    def __init__(self, fp):
        self.fp = fp

    def write(self, frames: np.ndarray) -> None:
        self.fp.write(np.ascontiguousarray(frames).data)

    def close(self) -> None:
        pass


def _stdout_binary():
    """Unbuffered binary stdout, so a downstream reader sees each frame as soon as it is encoded."""
    if sys.stdout is None:
        raise FlashdecodeError("stdout is closed; pass -o FILE")
    if sys.stdout.isatty():
        raise FlashdecodeError("refusing to write binary video to a terminal; redirect stdout "
                               "(e.g. `| ffplay -`) or pass -o FILE")
    sys.stdout.flush()
    return open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)


class VideoWriter:
    """Write uint8 [k,H,W,3] chunks to `output` on a background thread fed through a bounded queue.

    output: '-' (stdout, `stdout_format` y4m|raw|mp4), *.mp4/.mkv/.mov/.webm, *.y4m, a folder or a
    %05d.png pattern. The output is checked (and created) here, before any decoding; `close()` flushes.
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
        self.sink = self._make_sink(output, fps, crf, codec, stdout_format)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._thread = threading.Thread(target=self._run, name="flashdecode-writer", daemon=True)
        self._thread.start()

    # -- set-up: everything that can fail because of the output happens here, before decoding ----------

    def _make_sink(self, output: str, fps: float, crf, codec, stdout_format):
        if fps <= 0:
            raise FlashdecodeError(f"--fps must be positive, got {fps}")
        if self.kind == "stdout":
            if stdout_format not in STDOUT_FORMATS:
                raise FlashdecodeError(f"unknown stdout format {stdout_format!r}; choose {', '.join(STDOUT_FORMATS)}")
            fp = _stdout_binary()
            if stdout_format == "raw":
                return _RawSink(fp)
            if stdout_format == "y4m":
                return _AVSink(fp, "yuv4mpegpipe", "rawvideo", fps, None)
            codec = codec or "libx264"
            _check_codec(codec)
            return _AVSink(fp, "mp4", codec, fps, crf, {"movflags": "frag_keyframe+empty_moov"})
        path = Path(output)
        if self.kind == "png":
            folder, pattern = (path.parent, path.name) if "%" in path.name else (path, "%05d.png")
            self._make_folder(folder)
            return _AVSink(str(folder / pattern), "image2", "png", fps, None, {"start_number": "0"})
        if self.kind == "y4m":
            self._touch(path)
            return _AVSink(str(path), "yuv4mpegpipe", "rawvideo", fps, None)
        codec = codec or CONTAINERS[path.suffix.lower()]
        _check_codec(codec)
        self._touch(path)
        return _AVSink(str(path), None, codec, fps, crf)

    def _touch(self, path: Path) -> None:
        """Create the file now: an unwritable output fails before any decoding, not after it."""
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
        while (frames := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead writer
            try:
                self.sink.write(frames)
                self.frames_written += len(frames)
            except BaseException as e:  # handed to the decoding thread on its next write()/close()
                self._error = e

    def write(self, frames: np.ndarray) -> None:
        """Queue uint8 [k,H,W,3] frames; blocks while the queue is full (the encoder is behind)."""
        self._raise_pending()
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [k,H,W,3], got {frames.dtype} {list(frames.shape)}")
        if self.size is None:
            self.size = frames.shape[1:3]
        self._queue.put(frames)

    def _raise_pending(self) -> None:
        if self._error is not None and not self._error_reported:
            self._error_reported = True
            raise self._error

    def close(self) -> None:
        """Finish the queued frames, flush the encoder, close the file; remove it if no frame arrived."""
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
        if self.frames_written == 0:
            self._remove_created()
        self._raise_pending()

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
