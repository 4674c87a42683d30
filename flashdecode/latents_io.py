"""Reading latents: .safetensors, .npy, ComfyUI .latent, torch.save .pt/.pth, or a stream of NPY arrays on
stdin, into canonical [B,C,t,h,w] chunks.

Everything here is about the input: which file, which tensor, which axis order, whether the values are raw
VAE latents or normalized ones, and whether they are usable. Problems become one-line FlashdecodeErrors that
name the fix. The decoder never sees a file.

ComfyUI's `.latent` (SaveLatent) is a safetensors file holding `latent_tensor` (its LATENT "samples": raw VAE
latents, [B,C,T,h,w] for Wan, [B,C,h,w] for images) and an empty `latent_format_version_0` tensor. ComfyUI's
LoadLatent multiplies a file WITHOUT that marker by 1/0.18215: such files come from before the marker existed,
when ComfyUI stored Stable Diffusion 1.x latents pre-scaled by that VAE's factor 0.18215. No Wan latent can be
such a file (ComfyUI gained Wan long after the marker), and 0.18215 is no Wan factor, so flashdecode never
applies it: with or without the marker, the tensor is read as raw Wan latents, and `info` says which.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from numpy.lib import format as npy_format

from .errors import FlashdecodeError, first_line, listed, shown
from .latent_spaces import LATENT_SPACES, pixel_frames
from .memory import check_host_memory

LAYOUTS = ("ncthw", "ntchw")
EXTENSIONS = (".safetensors", ".npy", ".latent", ".pt", ".pth")
TORCH_EXTENSIONS = (".pt", ".pth")
LATENT_KEYS = ("latents", "latent_tensor", "samples", "latent", "z")  # the tensor a file's key names, in this order
COMFY_KEY, COMFY_MARKER = "latent_tensor", "latent_format_version_0"  # ComfyUI's SaveLatent (see the docstring)
UNSAID = "the file does not say"  # whether its values are raw or normalized (decoded as normalized unless --raw)
CHANNELS_TO_SPACE = {16: "wan2.1", 48: "wan2.2"}  # "demo" is also 48 channels: only metadata can say so


# -- reading the raw array -------------------------------------------------------------------------------
#
# Every size a file or stream claims (an NPY header's shape, a safetensors header's length and byte ranges)
# is checked against the bytes actually there and against the free memory BEFORE anything is allocated, and
# a stream's payload is allocated only as its bytes arrive: a 20-byte input that claims a petabyte costs
# nothing and fails with one line.

NPY_MAX_HEADER = 10000  # numpy's own default max_header_size
READ_BLOCK = 64 << 20  # a stream's claimed payload is allocated at most this far ahead of the bytes that arrived
SAFETENSORS_MAX_HEADER = 100 << 20  # the most safetensors itself accepts
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
TOO_BIG_FIX = "the input is corrupt, or too big for this machine: pass a smaller piece (or stream it as NPY arrays on stdin)"


def _read_upto(fp, n: int) -> bytes:
    """n bytes, or fewer only at EOF (an unbuffered pipe may hand over less per read)."""
    data = fp.read(n)
    while data and len(data) < n:
        more = fp.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _truncated(what: str, promised: int, got: int) -> FlashdecodeError:
    return FlashdecodeError(f"{what} is truncated: its header promises {promised} bytes of data, got {got}; "
                            "the producer stopped mid-array or the file is incomplete")


def _read_exact(fp, n: int, what: str, trusted: bool = False) -> memoryview | bytearray:
    """Exactly n bytes, never past them (more data may follow). `trusted`: n was checked against the file size,
    so it is allocated at once; else it grows block by block as the bytes arrive, and a lie fails at EOF."""
    if trusted or n <= READ_BLOCK:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:  # a pipe hands over what has arrived so far: keep reading until it is all here
            k = fp.readinto(view[got:])
            if not k:
                raise _truncated(what, n, got)
            got += k
        return buf
    buf = bytearray()
    while len(buf) < n:
        block = fp.read(min(n - len(buf), READ_BLOCK))
        if not block:
            raise _truncated(what, n, len(buf))
        buf += block
    return buf


def _skip(fp, n: int, what: str, promised: int) -> None:
    """Read and drop n bytes in blocks (bounded memory), failing at an early EOF."""
    left = n
    while left:
        block = fp.read(min(left, READ_BLOCK))
        if not block:
            raise _truncated(what, promised, promised - left)
        left -= len(block)


def _check_claim(shape, itemsize: int, is_float: bool, what: str) -> int:
    """The bytes an array of `shape` holds, after refusing empty/negative axes and sizes the memory cannot hold.

    Python ints, so no overflow; the need counts the array, a float32 copy when it is not float, and the
    NaN/Inf mask.
    """
    if any(int(d) < 1 for d in shape):
        raise FlashdecodeError(f"{what} has shape {list(shape)}: every axis must be at least 1 "
                               "(latents hold at least one frame of at least one cell)")
    elements = 1
    for d in shape:
        elements *= int(d)
    nbytes = elements * itemsize
    check_host_memory(nbytes + elements * (1 + (0 if is_float else 4)), f"{what} (shape {list(shape)})", TOO_BIG_FIX)
    return nbytes


def _read_npy_header(fp, version: tuple[int, int], what: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of the NPY header that follows the magic. Its length is checked before it
    is read: numpy reads a header whole and only then checks its size, so a 12-byte input claiming a 4 GiB header
    would cost 4 GiB."""
    if version not in ((1, 0), (2, 0), (3, 0)):  # 3.0 only differs from 2.0 by allowing utf-8 in the header
        raise FlashdecodeError(f"{what} has an unsupported NPY version {version[0]}.{version[1]}; write it with numpy.save")
    length_bytes = _read_upto(fp, 2 if version == (1, 0) else 4)
    n = int.from_bytes(length_bytes, "little")
    if len(length_bytes) < (2 if version == (1, 0) else 4):
        raise FlashdecodeError(f"{what} is truncated inside its NPY header")
    if n > NPY_MAX_HEADER:
        raise FlashdecodeError(f"{what} claims a {n}-byte NPY header (numpy.save writes about 128 bytes, and numpy "
                               f"reads at most {NPY_MAX_HEADER}); it is corrupt")
    header = io.BytesIO(length_bytes + bytes(_read_exact(fp, n, f"{what} NPY header")))
    try:
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(header)
        else:
            shape, fortran, dtype = npy_format.read_array_header_2_0(header)
    except Exception as e:  # numpy raises ValueError, SyntaxError, tokenize errors... for a mangled header
        raise FlashdecodeError(f"{what} has a corrupt NPY header ({shown(e)}); write it with numpy.save") from None
    if dtype.hasobject:
        raise FlashdecodeError(f"{what} holds Python objects ({shown(dtype)}); latents must be a numeric array "
                               "(object arrays would need unpickling, which flashdecode never does)")
    if dtype.kind not in "fiu":
        raise FlashdecodeError(f"{what} has dtype {shown(dtype)}; latents must be a float (or int) array")
    return shape, fortran, dtype


def _npy_array(data, shape, fortran: bool, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


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
            raise FlashdecodeError(f"{what} does not start with the NPY magic (got {head[:6]!r}); {name} must carry "
                                   "arrays written by numpy.save one after another, or one .safetensors file") from None
        shape, fortran, dtype = _read_npy_header(fp, version, what)
        nbytes = _check_claim(shape, dtype.itemsize, dtype.kind == "f", what)
        yield _npy_array(_read_exact(fp, nbytes, what), shape, fortran, dtype)
        index += 1


def _load_npy_file(path: Path, label: str) -> np.ndarray:
    with open(path, "rb") as fp:
        head = fp.read(npy_format.MAGIC_LEN)
        try:
            version = npy_format.read_magic(io.BytesIO(head))
        except ValueError:
            raise FlashdecodeError(f"{label} is not a valid .npy file (bad magic {head[:6]!r}); write it with numpy.save") from None
        shape, fortran, dtype = _read_npy_header(fp, version, label)
        if any(int(d) < 1 for d in shape):
            _check_claim(shape, 1, True, label)  # raises the empty-axis error
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a huge claim is just a big number
        there = os.fstat(fp.fileno()).st_size - fp.tell()
        if nbytes > there:  # the file size says what is really there: refuse before allocating the claim
            raise _truncated(label, nbytes, there)
        if nbytes < there:
            raise FlashdecodeError(f"{label} has bytes after its array; it is corrupt or holds several arrays "
                                   "(pipe a multi-array stream on stdin instead: `cat FILE | flashdecode decode -`)")
        _check_claim(shape, dtype.itemsize, dtype.kind == "f", label)
        return _npy_array(_read_exact(fp, nbytes, label, trusted=True), shape, fortran, dtype)


class _Found(NamedTuple):
    """What a container file held: the chosen tensor, the file's metadata, its name in the file, every name."""

    tensor: torch.Tensor
    metadata: dict
    key: str | None
    names: list
    format: str


def _check_tensor_dtype(dtype: str, what: str) -> torch.dtype:
    """A safetensors dtype name -> torch dtype, refusing what is not a float or int array (bool, as from NPY)."""
    if dtype not in SAFETENSORS_DTYPES:
        named = "bool" if dtype == "BOOL" else dtype
        raise FlashdecodeError(f"{what} has dtype {shown(named)}; latents must be a float (or int) array")
    return SAFETENSORS_DTYPES[dtype]


def _pick_name(names: list[str], key: str | None, name: str) -> str:
    """--key, else the first of LATENT_KEYS the file has, else its only tensor (ComfyUI's empty marker aside)."""
    if key is not None:
        if key not in names:
            raise FlashdecodeError(f"{name} has no tensor {key!r}; it has {listed(sorted(names)) or 'none'}")
        return key
    for k in LATENT_KEYS:
        if k in names:
            return k
    others = [n for n in names if n != COMFY_MARKER]
    if len(others) == 1:
        return others[0]
    raise FlashdecodeError(f"{name} holds {len(names)} tensors ({listed(sorted(names))}) and none is called "
                           f"{', '.join(LATENT_KEYS[:-1])} or {LATENT_KEYS[-1]}; pass --key NAME")


def _not_safetensors(name: str, why) -> FlashdecodeError:
    return FlashdecodeError(f"{name} is truncated or not a valid safetensors file ({why}); "
                            "re-save it with safetensors.torch.save_file")


def _load_safetensors_file(path: Path, key: str | None, label: str) -> _Found:
    """The chosen tensor of a .safetensors/.latent file (safetensors checks the header against the file size; we
    check the tensor's dtype, shape and memory before it is read) and the file's metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            names, meta = list(f.keys()), f.metadata() or {}
            chosen = _pick_name(names, key, label)
            piece = f.get_slice(chosen)
            what = label if len(names) == 1 else f"{label} tensor {chosen!r}"
            dtype = _check_tensor_dtype(piece.get_dtype(), what)
            _check_claim(piece.get_shape(), dtype.itemsize, dtype.is_floating_point, what)
            return _Found(f.get_tensor(chosen), dict(meta), chosen, names, "safetensors")
    except (SafetensorError, ValueError, TypeError) as e:  # all mean "not a valid file"
        raise _not_safetensors(label, shown(e)) from None


def _safetensors_header_entry(tensor: str, entry, name: str) -> tuple[str, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry, checked for sense: the declared range fits the shape."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        ok = isinstance(dtype, str) and all(type(v) is int and v >= 0 for v in (*shape, begin, end)) and begin <= end
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise _not_safetensors(name, f"tensor {tensor!r} has a malformed header entry {shown(str(entry)[:120])}")
    if dtype in SAFETENSORS_DTYPES and end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize:
        raise _not_safetensors(name, f"tensor {tensor!r} declares {end - begin} bytes for shape {shape} {dtype}")
    return dtype, shape, begin, end


def _load_safetensors_stream(fp, first_bytes: bytes, key: str | None, name: str = "stdin") -> _Found:
    """One safetensors file arriving on a stream: the header is read and checked first (its length against a bound,
    each tensor's byte range against its shape), then only the chosen tensor is kept, allocated as it arrives."""
    head = first_bytes + _read_upto(fp, max(0, 8 - len(first_bytes)))
    if len(head) < 8:
        raise _not_safetensors(name, f"{len(head)} bytes is not even a safetensors header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > SAFETENSORS_MAX_HEADER:
        raise _not_safetensors(name, f"it claims a {n}-byte header; safetensors allows at most {SAFETENSORS_MAX_HEADER}")
    raw = head[8:] + _read_exact(fp, max(0, n - len(head[8:])), f"{name} safetensors header")
    try:
        header = json.loads(bytes(raw[:n]))
        meta = header.pop("__metadata__", None) or {} if isinstance(header, dict) else None
    except (ValueError, UnicodeDecodeError) as e:
        raise _not_safetensors(name, f"its header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(meta, dict):
        raise _not_safetensors(name, "its header is not a JSON object")
    entries = {t: _safetensors_header_entry(t, e, name) for t, e in header.items()}
    chosen = _pick_name(list(entries), key, name)
    dtype_name, shape, begin, end = entries[chosen]
    dtype = _check_tensor_dtype(dtype_name, name)
    _check_claim(shape, dtype.itemsize, dtype.is_floating_point, name)
    payload = max(e[3] for e in entries.values())
    _skip(fp, begin, name, payload)
    data = _read_exact(fp, end - begin, name)
    _skip(fp, payload - end, name, payload)  # the rest is not needed, but a cut-off file is still an error
    return _Found(torch.frombuffer(data, dtype=dtype).reshape(shape), {str(k): str(v) for k, v in meta.items()},
                  chosen, list(entries), "safetensors")


def _load_torch_file(path: Path, key: str | None, label: str) -> _Found:
    """torch.save latents: a tensor, or a dict holding one (LATENT_KEYS or --key; its plain str/number values are
    the metadata). Read with torch.load(weights_only=True) only, memory-mapped where the file allows it (the zip
    format of torch >= 1.6): a file that needs more than tensors and plain values to load is refused, and nothing
    in it runs."""
    import pickle
    import zipfile

    zipped = zipfile.is_zipfile(path)
    if not zipped:  # the legacy format cannot be mapped: it is read whole, so it must fit
        check_host_memory(path.stat().st_size, label, TOO_BIG_FIX)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler met something that is not plain data
        needs = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
        what = f"holds a pickled Python object ({shown(needs.group(1))})" if needs else \
            "is corrupt or holds more than tensors and plain values"
        raise FlashdecodeError(f"{label} {what}; flashdecode never unpickles objects: save the latents with "
                               "torch.save(tensor) or as safetensors") from None
    except Exception as e:  # a torn zip, a truncated file, a storage shorter than its tensor...
        raise FlashdecodeError(f"{label} is truncated or not a torch.save file ({first_line(e)}); "
                               "re-save it with torch.save or as safetensors") from None
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise FlashdecodeError(f"{label} holds one tensor, not a dict: --key {key!r} does not apply")
        tensor, chosen, names, meta = obj, None, [], {}
    elif isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise FlashdecodeError(f"{label} holds a dict without a tensor (keys: {listed(map(str, obj)) or 'none'}); "
                                   f"save the latents under one of {', '.join(LATENT_KEYS)}")
        chosen = _pick_name(list(tensors), key, label)
        tensor, names = tensors[chosen], list(tensors)
        meta = {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
    else:
        raise FlashdecodeError(f"{label} holds a {type(obj).__name__}, not a tensor or a dict of tensors; "
                               "save the latents with torch.save(tensor) or torch.save({'latents': tensor})")
    what = label if chosen is None else f"{label} tensor {chosen!r}"
    if tensor.layout != torch.strided or tensor.dtype not in SAFETENSORS_DTYPES.values():
        kind = str(tensor.dtype).replace("torch.", "") if tensor.layout == torch.strided else str(tensor.layout)
        raise FlashdecodeError(f"{what} has dtype {kind}; latents must be a dense float (or int) array")
    _check_claim(tuple(tensor.shape), tensor.element_size(), tensor.is_floating_point(), what)
    return _Found(tensor.detach(), meta, chosen, names, "torch.save")


def _is_directory(label: str) -> FlashdecodeError:
    return FlashdecodeError(f"input {label} is a directory; pass a latent file ({', '.join(EXTENSIONS)})")


def _check_input_path(path: Path, label: str) -> None:
    if path.suffix.lower() not in EXTENSIONS:
        raise FlashdecodeError(f"unknown input extension {path.suffix or '(none)'!r} for {label}; "
                               f"flashdecode reads {', '.join(EXTENSIONS)}, or '-' for stdin")
    if not path.exists():
        raise FlashdecodeError(f"input {label} does not exist")
    if path.is_dir():
        raise _is_directory(label)


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
    """numpy/torch -> a float torch tensor without a copy where possible (big-endian and integer arrays converted)."""
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return torch.from_numpy(arr)
    return arr if arr.is_floating_point() else arr.float()


# -- the opened input ------------------------------------------------------------------------------------

@dataclass
class Latents:
    """An opened latent input. `chunks` yields canonical [B,C,t,h,w] tensors (checked finite) in order.

    `raw`: what the file says its values are (True: raw VAE latents, False: normalized, None: it does not say,
    and decoding takes them as normalized unless told --raw); `raw_reason` says how that was told.
    """

    name: str
    shape: tuple  # canonical (B, C, T, h, w); T is None for a stream whose length is not known yet
    dtype: str
    layout: str
    layout_reason: str
    chunks: Iterator[torch.Tensor] = field(repr=False)
    metadata: dict = field(default_factory=dict)
    format: str = "npy"  # npy, NPY stream, safetensors, ComfyUI .latent, torch.save
    key: str | None = None  # the tensor's name in the file
    raw: bool | None = None
    raw_reason: str = UNSAID

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


def _whole(x, name: str, layout: str | None, channels, metadata: dict, check: bool, comfy: bool = False) -> Latents:
    """A tensor that is all there: validate it once up front, then hand out one latent frame at a time.
    `comfy`: ComfyUI's LATENT samples, always [B,C,T,h,w] (video) or [B,C,h,w] (an image batch)."""
    label = shown(name)
    if x.ndim not in (3, 4, 5):
        to_ncthw(x, "ncthw", label)  # raises the rank error
    if comfy and not layout:
        x = x[:, :, None] if x.ndim == 4 else x
        chosen, why = "ncthw", "ComfyUI latents are [B,C,T,h,w]"
    else:
        chosen, why = (layout, "--layout") if layout else guess_layout(tuple(x.shape), channels, metadata)
    z = to_ncthw(_as_tensor(x), chosen, label)
    if check:
        check_finite(z, label)
    frames = (z[:, :, t:t + 1] for t in range(z.shape[2]))
    return Latents(name, tuple(z.shape), str(z.dtype).replace("torch.", ""), chosen, why, frames, metadata)


def _opened(found: _Found, name: str, layout, channels, check) -> Latents:
    """A container's tensor as Latents, with what the file says about its values (raw or normalized)."""
    comfy = COMFY_MARKER in found.names or found.key == COMFY_KEY
    if comfy:
        fmt, raw = "ComfyUI .latent", True
        why = "ComfyUI .latent" + ("" if COMFY_MARKER in found.names else
                                   f" without its {COMFY_MARKER} marker: ComfyUI's legacy scale 1/0.18215, a Stable "
                                   "Diffusion 1.x factor and no Wan one, is not applied")
    elif found.format == "torch.save" and found.key == "samples":
        comfy, fmt, raw, why = True, "torch.save", True, "a ComfyUI LATENT dict ('samples')"
    elif str(found.metadata.get("normalized", "")).lower() in ("true", "false"):
        fmt, raw = found.format, found.metadata["normalized"].lower() == "false"
        why = "file metadata 'normalized'"
    else:
        fmt, raw, why = found.format, None, UNSAID
    latents = _whole(found.tensor, name, layout, channels, found.metadata, check, comfy)
    latents.format, latents.key, latents.raw, latents.raw_reason = fmt, found.key, raw, why
    return latents


def _stream(arrays: Iterator[np.ndarray], name: str, layout: str | None, channels, check: bool) -> Latents:
    """A stream of arrays: open it on the first one, check each later one against it as it arrives."""
    label = shown(name)
    first = next(arrays, None)
    if first is None:
        raise FlashdecodeError(f"{label} is empty: no latent arrays arrived; "
                               "the producer must write arrays with numpy.save before closing the pipe")
    chosen, why = (layout, "--layout") if layout else guess_layout(first.shape, channels)
    z0 = to_ncthw(_as_tensor(first), chosen, f"{label} array 0")
    B, C, _, h, w = z0.shape

    def chunks():
        offset, fixed = 0, layout or (chosen if first.ndim >= 4 else None)
        for i, arr in enumerate(_chain(first, arrays)):
            what = f"{label} array {i}"
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

    return Latents(name, (B, C, None, h, w), str(z0.dtype).replace("torch.", ""), chosen, why, chunks(),
                   format="NPY stream")


def _chain(first, rest):
    yield first
    yield from rest


def open_latents(source: str | Path, key: str | None = None, layout: str | None = None,
                 channels: set[int] | None = None, check: bool = True, stdin=None) -> Latents:
    """Open a latent file (.safetensors, .npy, ComfyUI .latent, torch.save .pt/.pth), or '-' for stdin (NPY
    arrays streamed, or one safetensors file).

    layout: "ncthw" / "ntchw" or None to use the file's metadata or an unambiguous channel count.
    channels: the channel counts that make sense (the model's), used only to guess the layout.
    """
    if layout is not None and layout.lower() not in LAYOUTS:
        raise FlashdecodeError(f"unknown layout {layout!r}; choose ncthw or ntchw")
    layout = layout.lower() if layout else None
    if str(source) == "-":
        return _open_stream(stdin or _stdin(), "stdin", key, layout, channels, check)

    path = Path(source)
    label = shown(path)
    _check_input_path(path, label)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a named pipe or a device: it cannot seek, so read it as a stream
            return _open_stream(open(path, "rb"), str(path), key, layout, channels, check)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _whole(_as_tensor(_load_npy_file(path, label)), str(path), layout, channels, {}, check)
        load = _load_torch_file if suffix in TORCH_EXTENSIONS else _load_safetensors_file
        found = load(path, key, label)
    except PermissionError:
        raise FlashdecodeError(f"input {label} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise _is_directory(label) from None
    return _opened(found, str(path), layout, channels, check)


def _open_stream(fp, name: str, key, layout, channels, check) -> Latents:
    """A stream (stdin, a named pipe): NPY arrays one after another, or one safetensors file, told by its first bytes."""
    head = _read_upto(fp, npy_format.MAGIC_LEN)
    if head[:6] == npy_format.MAGIC_PREFIX or not head:
        return _stream(iter_npy_stream(fp, shown(name), head), name, layout, channels, check)
    head += fp.read(1)
    if head[8:9] == b"{":  # safetensors: a u64 header length, then the JSON header
        return _opened(_load_safetensors_stream(fp, head, key, shown(name)), name, layout, channels, check)
    raise FlashdecodeError(f"{shown(name)} is neither NPY arrays (numpy.save) nor a safetensors file "
                           f"(it starts with {head[:9]!r})")


def _stdin():
    """The binary stdin, refusing a closed one (`<&-`) or a terminal (nothing would ever arrive) in one line."""
    if sys.stdin is None or sys.stdin.closed:
        raise FlashdecodeError("stdin is closed; pipe latents in (producer | flashdecode decode -) or pass a file")
    if sys.stdin.isatty():
        raise FlashdecodeError("'-' reads latents from stdin, which is a terminal; pipe them in "
                               "(producer | flashdecode decode -) or pass a .safetensors/.npy file")
    return sys.stdin.buffer


def describe(latents: Latents) -> dict:
    """What `flashdecode info` prints: format, shape, dtype, layout, raw or normalized, latent space guess, frames."""
    space, space_why = latents.latent_space_guess()
    B, C, T, h, w = latents.shape
    spatial = LATENT_SPACES[space].spatial if space else None
    return {
        "input": latents.name,
        "format": latents.format,
        "key": latents.key,
        "shape": [B, C, T, h, w],
        "dtype": latents.dtype,
        "layout": latents.layout,
        "layout_reason": latents.layout_reason,
        "raw": bool(latents.raw),  # what `decode` takes them as unless told --raw / --no-raw
        "raw_reason": latents.raw_reason,
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
