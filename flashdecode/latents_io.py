"""Reading latents: .safetensors, .npy, or a stream of NPY arrays on stdin, into canonical [B,C,t,h,w] chunks.

Everything here is about the input: which file, which tensor, which axis order, and whether the values
are usable. Problems become one-line FlashdecodeErrors that name the fix. The decoder never sees a file.
"""
from __future__ import annotations

import io
import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from .errors import FlashdecodeError
from .latent_spaces import LATENT_SPACES, pixel_frames

LAYOUTS = ("ncthw", "ntchw")
EXTENSIONS = (".safetensors", ".npy")
CHANNELS_TO_SPACE = {16: "wan2.1", 48: "wan2.2"}  # "demo" is also 48 channels: only metadata can say so


# -- reading the raw array -------------------------------------------------------------------------------

def _read_upto(fp, n: int) -> bytes:
    """n bytes, or fewer only at EOF (an unbuffered pipe may hand over less per read)."""
    data = fp.read(n)
    while data and len(data) < n:
        more = fp.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _read_npy_payload(fp, shape, fortran: bool, dtype: np.dtype, what: str) -> np.ndarray:
    """Read an NPY payload into a fresh array, exactly its bytes, never past it (more arrays may follow)."""
    arr = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
    view = memoryview(arr.view(np.uint8)).cast("B")
    got = 0
    while got < len(view):  # a pipe hands over what has arrived so far: keep reading until it is all here
        n = fp.readinto(view[got:])
        if not n:
            raise FlashdecodeError(f"{what} is truncated: its header promises {len(view)} bytes of data, "
                                   f"got {got}; the producer stopped mid-array or the file is incomplete")
        got += n
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_npy_after_magic(fp, version: tuple[int, int], what: str) -> np.ndarray:
    try:
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):  # 3.0 only differs by allowing utf-8 in the header
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported NPY version {version}")
    except Exception as e:  # numpy raises ValueError, SyntaxError, tokenize errors... for a mangled header
        raise FlashdecodeError(f"{what} has a corrupt NPY header ({e}); write it with numpy.save") from None
    if dtype.hasobject:
        raise FlashdecodeError(f"{what} holds Python objects ({dtype}); latents must be a numeric array "
                               "(object arrays would need unpickling, which flashdecode never does)")
    if dtype.kind not in "fiu":
        raise FlashdecodeError(f"{what} has dtype {dtype}; latents must be a float (or int) array")
    return _read_npy_payload(fp, shape, fortran, dtype, what)


def iter_npy_stream(fp, name: str = "stdin", first_bytes: bytes = b"") -> Iterator[np.ndarray]:
    """Arrays written one after another with numpy.save, yielded as each one has fully arrived.

    Reads each header and then exactly its payload, so the first frame is decoded while the producer is
    still writing the rest. `first_bytes` are bytes already taken from the stream (format sniffing).
    """
    index = 0
    pending = first_bytes
    while True:
        head = pending + _read_upto(fp, npy_format.MAGIC_LEN - len(pending))
        pending = b""
        what = f"{name} array {index}"
        if not head:
            return  # clean EOF between arrays
        if len(head) < npy_format.MAGIC_LEN:
            raise FlashdecodeError(f"{what} is truncated: {len(head)} stray bytes at the end of the stream")
        try:
            version = npy_format.read_magic(io.BytesIO(head))
        except ValueError:
            raise FlashdecodeError(f"{what} does not start with the NPY magic (got {head[:6]!r}); stdin must carry "
                                   "arrays written by numpy.save one after another, or one .safetensors file") from None
        yield _read_npy_after_magic(fp, version, what)
        index += 1


def _safetensors_from_bytes(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Parse a whole safetensors file held in memory: its tensors and its metadata."""
    from safetensors.torch import load as st_load

    if len(data) < 8:
        raise FlashdecodeError(f"{name} is truncated: {len(data)} bytes is not even a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        if 8 + n > len(data):
            raise ValueError(f"header of {n} bytes but the file has {len(data)}")
        header = json.loads(data[8:8 + n])
        metadata = header.pop("__metadata__", None) or {}
        payload = max((v["data_offsets"][1] for v in header.values()), default=0)
        if 8 + n + payload > len(data):
            raise ValueError(f"tensors need {8 + n + payload} bytes but the file has {len(data)}")
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types; all mean "not a valid file"
        raise FlashdecodeError(f"{name} is truncated or not a valid safetensors file ({e}); "
                               "re-save it with safetensors.torch.save_file") from None
    return tensors, dict(metadata)


def _pick_tensor(tensors: dict, key: str | None, name: str) -> torch.Tensor:
    if key is not None:
        if key not in tensors:
            raise FlashdecodeError(f"{name} has no tensor {key!r}; it has {', '.join(sorted(tensors)) or 'none'}")
        return tensors[key]
    if "latents" in tensors:
        return tensors["latents"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise FlashdecodeError(f"{name} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}) and none is called "
                           "'latents'; pass --key NAME")


def _load_npy_file(path: Path) -> np.ndarray:
    with open(path, "rb") as fp:
        head = fp.read(npy_format.MAGIC_LEN)
        try:
            version = npy_format.read_magic(io.BytesIO(head))
        except ValueError:
            raise FlashdecodeError(f"{path} is not a valid .npy file (bad magic {head[:6]!r}); write it with numpy.save") from None
        arr = _read_npy_after_magic(fp, version, str(path))
        if fp.read(1):
            raise FlashdecodeError(f"{path} has bytes after its array; it is corrupt or holds several arrays "
                                   "(pipe a multi-array stream on stdin instead: `cat FILE | flashdecode decode -`)")
    return arr


def _check_input_path(path: Path) -> None:
    if path.suffix.lower() not in EXTENSIONS:
        raise FlashdecodeError(f"unknown input extension {path.suffix or '(none)'!r} for {path}; "
                               "flashdecode reads .safetensors, .npy, or '-' for stdin")
    if not path.exists():
        raise FlashdecodeError(f"input {path} does not exist")
    if path.is_dir():
        raise FlashdecodeError(f"input {path} is a directory; pass a .safetensors or .npy file")


# -- layout and shape ------------------------------------------------------------------------------------

def guess_layout(shape, channels: set[int] | None = None, metadata: dict | None = None) -> tuple[str, str]:
    """(layout, why) for an array of rank 4/5: metadata "layout" first, else the channel count if unambiguous.

    NCTHW is canonical: when both the NCTHW and the NTCHW channel positions hold a plausible channel
    count (e.g. 16 channels and 16 frames), NCTHW wins and `why` says it was a default, not a detection.
    """
    meta_layout = str((metadata or {}).get("layout", "")).lower()
    if meta_layout in LAYOUTS:
        return meta_layout, "file metadata"
    if len(shape) < 4:
        return "ncthw", "single frame"
    channels = channels or set(CHANNELS_TO_SPACE)
    c_first, c_second = shape[-4] in channels, shape[-3] in channels
    if c_second and not c_first:
        return "ntchw", f"channel count {shape[-3]}"
    if c_first and not c_second:
        return "ncthw", f"channel count {shape[-4]}"
    return "ncthw", "default (ambiguous: pass --layout)" if c_first else "default"


def to_ncthw(x: torch.Tensor, layout: str, what: str) -> torch.Tensor:
    """[C,h,w] frame, [C,t,h,w] / [t,C,h,w] chunk, or [B,...] batch -> a [B,C,t,h,w] view."""
    if x.ndim == 3:
        return x[None, :, None]
    if x.ndim not in (4, 5):
        raise FlashdecodeError(f"{what} has rank {x.ndim} (shape {list(x.shape)}); latents must be a frame [C,h,w], "
                               "a clip [C,t,h,w] or a batch [B,C,t,h,w] (NTCHW with --layout ntchw)")
    if x.ndim == 4:
        x = x[None]
    return x.transpose(1, 2) if layout == "ntchw" else x


def check_finite(x: torch.Tensor, what: str, frame_offset: int = 0) -> None:
    """Refuse NaN/Inf, saying how many and where the first one is (batch, channel, latent frame, row, col)."""
    bad = ~torch.isfinite(x)
    if not bad.any():
        return
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    t = int(bad.any(dim=(0, 1, 3, 4)).nonzero()[0])  # the earliest frame: what a stream would hit first
    b, c, i, j = (int(v) for v in bad[:, :, t].nonzero()[0])
    raise FlashdecodeError(f"{what} contains {n_nan} NaN and {n_inf} Inf values (of {x.numel()}); the first is at "
                           f"batch {b}, channel {c}, latent frame {frame_offset + t}, row {i}, col {j}; "
                           "fix the producer (a diverged sampler or an fp16 overflow) before decoding")


def _as_tensor(arr) -> torch.Tensor:
    """numpy -> torch without a copy where possible (big-endian and integer arrays are converted)."""
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return torch.from_numpy(arr)
    return arr


# -- the opened input ------------------------------------------------------------------------------------

@dataclass
class Latents:
    """An opened latent input. `chunks` yields canonical [B,C,t,h,w] tensors (checked finite) in order."""

    name: str
    shape: tuple  # canonical (B, C, T, h, w); T is None for a stream whose length is not known yet
    dtype: str
    layout: str
    layout_reason: str
    chunks: Iterator[torch.Tensor] = field(repr=False)
    metadata: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def latent_frames(self) -> int | None:
        return self.shape[2]

    def latent_space_guess(self) -> tuple[str | None, str]:
        """(name, why): the `latent_space` metadata if any, else the channel count (16 wan2.1, 48 wan2.2)."""
        meta = self.metadata.get("latent_space")
        if meta in LATENT_SPACES:
            return meta, "file metadata"
        name = CHANNELS_TO_SPACE.get(self.channels)
        return name, (f"{self.channels} channels" if name else f"no latent space has {self.channels} channels")


def _whole(x, name: str, layout: str | None, channels, metadata: dict, check: bool) -> Latents:
    """A tensor that is all there: validate it once up front, then hand out one latent frame at a time."""
    if x.ndim not in (3, 4, 5):
        to_ncthw(x, "ncthw", name)  # raises the rank error
    chosen, why = (layout, "--layout") if layout else guess_layout(tuple(x.shape), channels, metadata)
    z = to_ncthw(_as_tensor(x), chosen, name)
    if check:
        check_finite(z, name)
    frames = (z[:, :, t:t + 1] for t in range(z.shape[2]))
    return Latents(name, tuple(z.shape), str(z.dtype).replace("torch.", ""), chosen, why, frames, metadata)


def _stream(arrays: Iterator[np.ndarray], name: str, layout: str | None, channels, check: bool) -> Latents:
    """A stream of arrays: open it on the first one, check each later one against it as it arrives."""
    first = next(arrays, None)
    if first is None:
        raise FlashdecodeError(f"{name} is empty: no latent arrays arrived; "
                               "the producer must write arrays with numpy.save before closing the pipe")
    chosen, why = (layout, "--layout") if layout else guess_layout(first.shape, channels)
    z0 = to_ncthw(_as_tensor(first), chosen, f"{name} array 0")
    B, C, _, h, w = z0.shape

    def chunks():
        offset, fixed = 0, layout or (chosen if first.ndim >= 4 else None)
        for i, arr in enumerate(_chain(first, arrays)):
            what = f"{name} array {i}"
            if fixed is None and arr.ndim >= 4:  # the first chunk with a time axis fixes the stream's layout
                fixed = guess_layout(arr.shape, channels)[0]
            z = z0 if i == 0 else to_ncthw(_as_tensor(arr), fixed or "ncthw", what)
            if (z.shape[0], z.shape[1], z.shape[3], z.shape[4]) != (B, C, h, w):
                raise FlashdecodeError(f"{what} has shape {list(arr.shape)} (as [B,C,t,h,w]: {list(z.shape)}) but the "
                                       f"stream started with batch {B}, {C} channels, grid {h}x{w}; "
                                       "all arrays of one video must share them")
            if check:
                check_finite(z, what, offset)
            offset += z.shape[2]
            yield z

    return Latents(name, (B, C, None, h, w), str(z0.dtype).replace("torch.", ""), chosen, why, chunks())


def _chain(first, rest):
    yield first
    yield from rest


def open_latents(source: str | Path, key: str | None = None, layout: str | None = None,
                 channels: set[int] | None = None, check: bool = True, stdin=None) -> Latents:
    """Open a .safetensors / .npy file, or '-' for stdin (NPY arrays streamed, or one safetensors file).

    layout: "ncthw" / "ntchw" or None to use the file's metadata or an unambiguous channel count.
    channels: the channel counts that make sense (the model's), used only to guess the layout.
    """
    if layout is not None and layout.lower() not in LAYOUTS:
        raise FlashdecodeError(f"unknown layout {layout!r}; choose ncthw or ntchw")
    layout = layout.lower() if layout else None
    if str(source) == "-":
        fp = stdin or sys.stdin.buffer
        head = _read_upto(fp, npy_format.MAGIC_LEN)
        if head[:6] == npy_format.MAGIC_PREFIX or not head:
            return _stream(iter_npy_stream(fp, "stdin", head), "stdin", layout, channels, check)
        head += fp.read(1)
        if head[8:9] == b"{":  # safetensors: a u64 header length, then the JSON header
            tensors, meta = _safetensors_from_bytes(head + fp.read(), "stdin")
            return _whole(_pick_tensor(tensors, key, "stdin"), "stdin", layout, channels, meta, check)
        raise FlashdecodeError("stdin is neither NPY arrays (numpy.save) nor a safetensors file "
                               f"(it starts with {head[:9]!r})")

    path = Path(source)
    _check_input_path(path)
    try:
        if path.suffix.lower() == ".npy":
            return _whole(_as_tensor(_load_npy_file(path)), str(path), layout, channels, {}, check)
        tensors, meta = _safetensors_from_bytes(path.read_bytes(), str(path))
    except PermissionError:
        raise FlashdecodeError(f"input {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise FlashdecodeError(f"input {path} is a directory; pass a .safetensors or .npy file") from None
    return _whole(_pick_tensor(tensors, key, str(path)), str(path), layout, channels, meta, check)


def describe(latents: Latents) -> dict:
    """What `flashdecode info` prints: shape, dtype, layout, latent space guess, frames it decodes to."""
    space, space_why = latents.latent_space_guess()
    B, C, T, h, w = latents.shape
    spatial = LATENT_SPACES[space].spatial if space else None
    return {
        "input": latents.name,
        "shape": [B, C, T, h, w],
        "dtype": latents.dtype,
        "layout": latents.layout,
        "layout_reason": latents.layout_reason,
        "latent_space": space,
        "latent_space_reason": space_why,
        "batch": B,
        "channels": C,
        "latent_frames": T,
        "pixel_frames": pixel_frames(T) if T is not None else None,
        "width": w * spatial if spatial else None,
        "height": h * spatial if spatial else None,
        "metadata": latents.metadata,
    }
