"""The abuse campaign of issue 10 as a table: bad input, hostile files and faults against every command and the API.

Each row is one case: the command line (or API call), its stdin and environment, the exit code it must give,
the words its single `error: ...` line must hold, and what it may leave on disk. Every row also asserts what
holds for all of them: exactly one `error:` line on stderr (or none, for a success or a quiet broken pipe),
never a Python traceback, and nothing half-written under a final name.

How a row runs, cheapest first:
- in process through typer's CliRunner (most rows: the error comes before any real work);
- "capped": rows whose input CLAIMS a size (an NPY shape, a safetensors header, --size) run together in ONE
  subprocess whose address space is capped (RLIMIT_AS), so an attempt to allocate the claim fails the row; the
  peak RSS of that process is asserted too;
- a subprocess of its own only where the process itself is the point: a closed stdin or stdout, a terminal,
  a pipe closed by `head`, Ctrl-C during start-up, SIGTERM mid-decode, a file-size limit (a full disk).

Rows whose fix belongs to another engineer and has not landed are strict xfails naming the owner: when the fix
lands they XPASS, which fails the run until the mark is removed.
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format
from safetensors.torch import save as st_save
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
CROP = REPO / "tests" / "data" / "wan21_crop_3lat_8x8.safetensors"  # real Wan2.1 latents [1,16,3,8,8]
CLIP = REPO / "tests" / "data" / "carphone_176x144_30fps_33f.mp4"  # 33 frames, 144x176
TINY = ["--model", "tiny", "--weights", "random"]
CAP_BYTES = 4 << 30  # address-space cap of the "capped" rows: torch's own mappings fit, a claimed petabyte does not
RSS_BOUND = 2 << 30  # peak resident memory of the whole capped process (torch + every capped row)
TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # what no message may carry raw: CR, ESC, BEL...


# -- inputs: small files that lie ------------------------------------------------------------------------

def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_claim(shape, descr="<f4", payload=b"") -> bytes:
    """An NPY header claiming `shape`, followed by only `payload`."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def npy_object() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


class Pwn:
    """A pickle that runs a shell command when unpickled: flashdecode must never unpickle it."""

    def __reduce__(self):
        return (os.system, ('touch "$ROBUSTNESS_PWNED"',))


def evil_pth(zip_format: bool) -> bytes:
    import pickle

    if not zip_format:
        return pickle.dumps({"state_dict": Pwn()}, protocol=2)
    buf = io.BytesIO()
    torch.save({"state_dict": Pwn()}, buf)
    return buf.getvalue()


def st(tensors: dict, metadata: dict | None = None) -> bytes:
    return st_save(tensors, metadata=metadata)


def st_header(header: dict, payload: bytes = b"", claim: int | None = None) -> bytes:
    """A safetensors file built by hand: its header may claim lengths and ranges that are not there."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if claim is None else claim) + raw + payload


def latents(c=16, t=3, h=8, w=8, **kw) -> torch.Tensor:
    return torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(0), **kw)


def crop_with(**meta) -> bytes:
    """The real crop with extra metadata (e.g. a bad fps)."""
    from safetensors import safe_open

    with safe_open(str(CROP), "pt") as f:
        return st({"latents": f.get_tensor("latents")}, {**f.metadata(), **meta})


def checkpoint(*, nan=False, config=None) -> bytes:
    """A tiny wan2.1 decoder checkpoint, with a NaN weight or a replaced `config` metadata entry on request."""
    import tempfile

    from safetensors import safe_open

    from flashdecode.checkpoint import save_checkpoint
    from flashdecode.engine import load_decoder

    dec = load_decoder("tiny", "wan2.1", weights="random", device="cpu", dtype="fp32", compile=False)
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d) / "c.safetensors", dec.model, "wan2.1")
        with safe_open(str(path), "pt") as f:
            state, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    if nan:
        next(iter(state.values())).view(-1)[0] = float("nan")
    if callable(config):  # a change to the real config
        config = json.dumps(config(json.loads(meta["config"])))
    if config is not None:
        meta["config"] = config
    return st(state, meta)


# -- the table -------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    argv: list  # strings; "{tmp}" is the case's own folder
    code: int = 2
    error: str | None = ""  # regex the one `error:` line must match; None: no error line (success, quiet pipe)
    stdin: bytes | None = None
    files: dict = field(default_factory=dict)  # name in {tmp} -> bytes (or a callable making them)
    env: dict = field(default_factory=dict)
    left: dict = field(default_factory=dict)  # name in {tmp} -> "absent" | "playable" | "untouched"
    how: str = "inproc"  # inproc | capped | process
    usage: bool = False  # a click usage error (bad option type): its own boxed "Error", exit 2
    marks: tuple = ()
    out: str | None = None  # regex stdout must match (in-process rows)


def C(*args, **kw) -> Case:
    return Case(*args, **kw)


DEC = ["decode"]
OUT = ["-o", "{tmp}/out.mp4"]
GONE = {"out.mp4": "absent"}
PB = 1 << 50
# An 8 GiB claim passes the memory check here whatever the machine has free, so what is tested is that a
# stream's payload is allocated only as its bytes arrive (the 4 GiB address-space cap would stop anything else)
ROOMY = {"FLASHDECODE_AVAILABLE_MEMORY": "64G"}

CASES = [
    # ---- decode: the input file (10.5, 10.6, 10.7) ------------------------------------------------------
    C("decode-ok-control", [*DEC, str(CROP), *OUT, *TINY, "-q"], code=0, error=None, left={"out.mp4": "playable"}),
    C("decode-missing-file", [*DEC, "{tmp}/nope.npy", *OUT, *TINY], error="does not exist", left=GONE),
    C("decode-bad-extension", [*DEC, "{tmp}/x.txt", *OUT, *TINY], files={"x.txt": b"hi"}, error="extension", left=GONE),
    C("decode-empty-npy", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": b""}, error="not a valid .npy", left=GONE),
    C("decode-npy-claims-petabyte", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy_claim((1, 16, PB, 8, 8))},
      error="truncated", left=GONE, how="capped"),
    C("decode-npy-claims-8GB", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy_claim((1, 16, 1 << 18, 16, 32), payload=b"\0" * 4096)},
      error="truncated", left=GONE, how="capped"),
    C("decode-npy-overflowing-shape", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy_claim((1 << 62, 1 << 62, 16, 8, 8))},
      error="truncated", left=GONE, how="capped"),
    C("decode-npy-header-claims-4GB", [*DEC, "{tmp}/x.npy", *OUT, *TINY],
      files={"x.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{'descr': '<f4', 'shape': (2,)}"},
      error="claims a 4294967280-byte NPY header", left=GONE, how="capped"),
    C("decode-stdin-npy-header-claims-4GB", [*DEC, "-", *OUT, *TINY],
      stdin=b"\x93NUMPY\x03\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{'descr': '<f4', 'shape': (2,)}",
      error="claims a 4294967280-byte NPY header", left=GONE, how="capped"),
    C("decode-npy-unknown-version", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": b"\x93NUMPY\x09\x00" + b"\0" * 64},
      error="version", left=GONE),
    C("decode-npy-trailing-bytes", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.zeros((1, 16, 1, 8, 8), "f4")) + b"junk"},
      error="bytes after its array", left=GONE),
    C("decode-npy-corrupt-header", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4 }\n"},
      error="corrupt NPY header", left=GONE),
    C("decode-npy-bool", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.ones((1, 16, 1, 8, 8), bool))},
      error="dtype bool", left=GONE),
    C("decode-npy-object-never-unpickled", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy_object()},
      error="Python objects", left=GONE),
    C("decode-npy-complex", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.ones((1, 16, 1, 8, 8), np.complex64))},
      error="complex64", left=GONE),
    C("decode-npy-zero-frames", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.zeros((1, 16, 0, 8, 8), "f4"))},
      error="at least 1", left=GONE),
    C("decode-npy-zero-height", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.zeros((1, 16, 2, 0, 8), "f4"))},
      error="at least 1", left=GONE),
    C("decode-npy-rank2", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.zeros((16, 8), "f4"))},
      error="rank 2", left=GONE),
    C("decode-npy-nan", [*DEC, "{tmp}/x.npy", *OUT, *TINY], files={"x.npy": npy(np.full((1, 16, 2, 8, 8), np.nan, "f4"))},
      error="NaN", left=GONE),
    C("decode-npy-wrong-channels", [*DEC, "{tmp}/x.npy", *OUT, *TINY, "--latent-space", "wan2.1"],
      files={"x.npy": npy(np.zeros((1, 7, 2, 8, 8), "f4"))}, error="channels", left=GONE),
    C("decode-st-bool", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": lambda: st({"latents": torch.ones(1, 16, 1, 8, 8, dtype=torch.bool)})}, error="dtype bool", left=GONE),
    C("decode-st-zero-frames", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": lambda: st({"latents": torch.zeros(1, 16, 0, 8, 8)})}, error="at least 1", left=GONE),
    C("decode-st-truncated", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": lambda: st({"latents": latents()})[:-100]}, error="not a valid safetensors", left=GONE),
    C("decode-st-header-claims-exabyte", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": st_header({"latents": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, claim=1 << 60)},
      error="safetensors", left=GONE, how="capped"),
    C("decode-st-overflowing-shape", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": st_header({"latents": {"dtype": "F32", "shape": [1 << 62, 1 << 62, 16], "data_offsets": [0, 4]}},
                                        b"\0" * 4)}, error="safetensors", left=GONE),
    C("decode-stdin-st-overflowing-shape", [*DEC, "-", *OUT, *TINY],
      stdin=st_header({"latents": {"dtype": "F32", "shape": [1 << 62, 1 << 62, 16], "data_offsets": [0, 4]}}, b"\0" * 4),
      error="declares 4 bytes", left=GONE),
    C("decode-stdin-st-negative-shape", [*DEC, "-", *OUT, *TINY],
      stdin=st_header({"latents": {"dtype": "F32", "shape": [1, 16, -1, 8, 8], "data_offsets": [0, 4]}}, b"\0" * 4),
      error="malformed header entry", left=GONE),
    C("decode-st-two-tensors-no-key", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": lambda: st({"a": latents(), "b": latents()})}, error="--key", left=GONE),
    C("decode-st-missing-key", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY, "--key", "zz"],
      files={"x.safetensors": lambda: st({"latents": latents()})}, error="no tensor 'zz'", left=GONE),
    # ---- decode: stdin ----------------------------------------------------------------------------------
    C("decode-stdin-empty", [*DEC, "-", *OUT, *TINY], stdin=b"", error="empty", left=GONE),
    C("decode-stdin-garbage", [*DEC, "-", *OUT, *TINY], stdin=b"GIF89a" + b"\0" * 100, error="neither NPY", left=GONE),
    C("decode-stdin-npy-claims-8GB", [*DEC, "-", *OUT, *TINY], stdin=npy_claim((1, 16, 1 << 18, 16, 32), payload=b"\0" * (1 << 20)),
      env=ROOMY, error="truncated", left=GONE, how="capped"),
    C("decode-stdin-npy-claims-petabyte", [*DEC, "-", *OUT, *TINY], stdin=npy_claim((1, 16, PB, 8, 8)),
      error="memory", left=GONE, how="capped"),
    C("decode-stdin-npy-stray-bytes", [*DEC, "-", *OUT, *TINY, "-q"], stdin=npy(latents().numpy()[0]) + b"\x93NU",
      error="stray bytes"),
    C("decode-stdin-grid-changes", [*DEC, "-", *OUT, *TINY, "-q"],
      stdin=npy(latents(t=1).numpy()[0]) + npy(latents(t=1, h=16).numpy()[0]), error="must share"),
    C("decode-stdin-st-header-claims-exabyte", [*DEC, "-", *OUT, *TINY], stdin=st_header({"x": 1}, claim=1 << 60),
      error="header", left=GONE, how="capped"),
    C("decode-stdin-st-range-claims-8GB", [*DEC, "-", *OUT, *TINY],
      stdin=st_header({"latents": {"dtype": "F32", "shape": [1, 16, 1 << 18, 16, 32], "data_offsets": [0, 8 << 30]}}, b"\0" * 4096),
      env=ROOMY, error="truncated", left=GONE, how="capped"),
    C("decode-stdin-st-range-lies", [*DEC, "-", *OUT, *TINY],
      stdin=st_header({"latents": {"dtype": "F32", "shape": [1, 16, 1, 8, 8], "data_offsets": [0, 1 << 40]}}),
      error="declares", left=GONE, how="capped"),
    C("decode-stdin-st-not-json", [*DEC, "-", *OUT, *TINY], stdin=struct.pack("<Q", 16) + b"{not json at all", error="not JSON",
      left=GONE),
    C("decode-stdin-st-bool", [*DEC, "-", *OUT, *TINY], stdin=st({"latents": torch.ones(1, 16, 1, 8, 8, dtype=torch.bool)}),
      error="dtype bool", left=GONE),
    C("decode-stdin-closed", [*DEC, "-", *OUT, *TINY], error="stdin is closed", left=GONE, how="process"),
    # ---- decode: options and environment ----------------------------------------------------------------
    C("decode-env-memory-junk", [*DEC, str(CROP), *OUT, *TINY], env={"FLASHDECODE_AVAILABLE_MEMORY": "lots"},
      error="FLASHDECODE_AVAILABLE_MEMORY", left=GONE),
    C("decode-env-memory-too-little", [*DEC, str(CROP), *OUT, *TINY], env={"FLASHDECODE_AVAILABLE_MEMORY": "1K"},
      error="available", left=GONE),
    C("decode-bad-layout", [*DEC, str(CROP), *OUT, *TINY, "--layout", "nhwc"], error="layout", left=GONE),
    C("decode-bad-model", [*DEC, str(CROP), *OUT, "--model", "huge", "--weights", "random"], error="unknown model", left=GONE),
    C("decode-bad-dtype", [*DEC, str(CROP), *OUT, *TINY, "--dtype", "int3"], error="dtype", left=GONE),
    C("decode-bad-device", [*DEC, str(CROP), *OUT, *TINY, "--device", "tpu"], error="device", left=GONE),
    C("decode-device-meta", [*DEC, str(CROP), *OUT, *TINY, "--device", "meta"], error="meta", left=GONE),
    C("decode-device-cuda-absent", [*DEC, str(CROP), *OUT, *TINY, "--device", "cuda"], error="cuda", left=GONE,
      marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),)),
    C("decode-fps-nan", [*DEC, str(CROP), *OUT, *TINY, "--fps", "nan"], error="fps", left=GONE),
    C("decode-fps-inf", [*DEC, str(CROP), *OUT, *TINY, "--fps", "inf"], error="fps", left=GONE),
    C("decode-fps-zero", [*DEC, str(CROP), *OUT, *TINY, "--fps", "0"], error="fps", left=GONE),
    C("decode-fps-1e12", [*DEC, str(CROP), *OUT, *TINY, "--fps", "1e12"], error="fps", left=GONE),
    C("decode-metadata-fps-zero", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY], files={"x.safetensors": lambda: crop_with(fps="0")},
      error="metadata", left=GONE),
    C("decode-codec-audio-only", [*DEC, str(CROP), *OUT, *TINY, "--codec", "aac"], error="aac", left=GONE),
    C("decode-json-is-folder", [*DEC, str(CROP), *OUT, *TINY, "--json", "{tmp}"], error="folder", left=GONE),
    C("decode-batch-index-out-of-range", [*DEC, str(CROP), *OUT, *TINY, "--batch-index", "5"], error="batch", left=GONE),
    C("decode-output-extension", [*DEC, str(CROP), "-o", "{tmp}/out.gif89", *TINY], error="", left={"out.gif89": "absent"}),
    C("decode-weights-missing", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/none.safetensors"], error="none.safetensors", left=GONE),
    C("decode-weights-pickle-never-loaded", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.pt"],
      files={"w.pt": b"\x80\x04\x95" + b"cos\nsystem\n" + b"\0" * 32}, error="", left=GONE),
    C("decode-weights-not-safetensors", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.safetensors"],
      files={"w.safetensors": b"\x10\0\0\0\0\0\0\0not a header!!!!"}, error="", left=GONE),
    C("decode-weights-config-malformed", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.safetensors"],
      files={"w.safetensors": lambda: checkpoint(config="{'depth': 2,")}, error="config", left=GONE),
    C("decode-weights-config-huge", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.safetensors"],
      files={"w.safetensors": lambda: checkpoint(config=json.dumps({"name": "tiny", "dim": 1 << 20, "depth": 4096,
                                                                      "heads": 8, "kv_heads": 8}))},
      error="", left=GONE, how="capped"),
    C("decode-weights-config-in-bounds-but-huge", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.safetensors"],
      files={"w.safetensors": lambda: checkpoint(config=lambda c: {**c, "depth": 64, "dim": 8192})},  # ~50 G params
      error="does not fit", left=GONE, how="capped"),
    C("decode-weights-nan", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/w.safetensors"],
      files={"w.safetensors": lambda: checkpoint(nan=True)}, error="NaN", left=GONE),
    C("decode-png-folder-reused", [*DEC, str(CROP), "-o", "{tmp}/frames/%05d.png", *TINY], files={"frames/00000.png": b"run 1"},
      error="overwrite|-y", left={"frames/00000.png": "untouched", "frames/00001.png": "absent"}),
    C("decode-png-two-numbers", [*DEC, str(CROP), "-o", "{tmp}/f/%d_%d.png", *TINY], error="exactly one", left={"f": "absent"}),
    C("decode-png-single-file", [*DEC, str(CROP), "-o", "{tmp}/one.png", *TINY], error="single .png", left={"one.png": "absent"}),
    C("decode-file-size-limit", [*DEC, str(CROP), *OUT, *TINY, "--json", "{tmp}/s.json", "-q"], error="", code=2,
      left={"out.mp4": "absent", "s.json": "not ok"}, how="fsize"),
    C("decode-crf-negative", [*DEC, str(CROP), *OUT, *TINY, "--crf", "-5"], error="crf", left=GONE),
    C("decode-preset-unknown", [*DEC, str(CROP), *OUT, *TINY, "--preset", "warp"], error="preset", left=GONE),
    C("decode-codec-unknown", [*DEC, str(CROP), *OUT, *TINY, "--codec", "nope264"], error="nope264", left=GONE),
    C("decode-stdout-format-unknown", [*DEC, str(CROP), "-o", "-", *TINY, "--format", "gif"], error="format"),
    C("decode-batch-index-negative", [*DEC, str(CROP), *OUT, *TINY, "--batch-index", "-1"], error="batch-index", left=GONE),
    C("decode-many-inputs-one-file", [*DEC, str(CROP), str(CROP), *OUT, *TINY], error="folder", left=GONE),
    C("decode-sigterm-mid-decode", [*DEC, "{tmp}/long.npy", *OUT, *TINY, "--json", "{tmp}/s.json"],
      files={"long.npy": lambda: npy(latents(t=40).numpy())}, code=143, error=None,
      left={"out.mp4": "playable", "s.json": "terminated"}, how="sigterm"),
    C("decode-ctrl-c-at-start-up", [*DEC, "{tmp}/long.npy", *OUT, *TINY, "-q"], files={"long.npy": lambda: npy(latents(t=40).numpy())},
      code=130, error=None, left={"out.mp4": "absent or playable"}, how="sigint"),
    C("decode-stdout-closed-by-head", [*DEC, str(CROP), "-o", "-", *TINY, "-q"], code=141, error=None, how="head"),
    # ---- info ------------------------------------------------------------------------------------------
    C("info-ok-control", ["info", str(CROP)], code=0, error=None),
    C("info-missing-file", ["info", "{tmp}/nope.safetensors"], error="does not exist"),
    C("info-npy-claims-petabyte", ["info", "{tmp}/x.npy"], files={"x.npy": npy_claim((1, 48, PB, 16, 16))},
      error="truncated", how="capped"),
    C("info-stdin-st-header-claims-exabyte", ["info", "-"], stdin=st_header({"x": 1}, claim=1 << 60), error="header", how="capped"),
    C("info-stdin-npy-bool", ["info", "-"], stdin=npy(np.ones((16, 8, 8), bool)), error="dtype bool"),
    C("info-npy-negative-shape", ["info", "{tmp}/x.npy"], files={"x.npy": npy_claim((1, 16, -3, 8, 8))}, error=""),
    C("info-env-memory-junk", ["info", str(CROP)], env={"FLASHDECODE_AVAILABLE_MEMORY": "12 parsecs"},
      error="FLASHDECODE_AVAILABLE_MEMORY"),
    C("info-env-memory-inf", ["info", str(CROP)], env={"FLASHDECODE_AVAILABLE_MEMORY": "9" * 400},
      error="FLASHDECODE_AVAILABLE_MEMORY"),
    C("info-stdin-closed", ["info", "-"], error="stdin is closed", how="process"),
    C("info-bad-layout", ["info", str(CROP), "--layout", "xyz"], error="layout"),
    # ---- forged and hostile text: a file's names and metadata reach the terminal escaped, long lists cut (19.7)
    C("info-metadata-escapes", ["info", "{tmp}/x.safetensors"], code=0, error=None,
      files={"x.safetensors": lambda: crop_with(**{"title\x1b]0;pwned\x07": "ok\r\nerror: forged\x1b[2J\x07"})},
      out=r"metadata\.'title\\x1b\]0;pwned\\x07' +'ok\\r\\nerror: forged\\x1b\[2J\\x07'"),
    C("decode-output-name-newline", [*DEC, str(CROP), "-o", "{tmp}/ok\nerror: forged.mp4", *TINY], code=0, error=None,
      left={"ok\nerror: forged.mp4": "playable"}),
    C("decode-batch-names-escapes", [*DEC, "{tmp}/in", "-o", "{tmp}/out/", *TINY], code=0, error=None,
      files={"in/\x1b[2J\x07a.npy": npy(latents(t=1).numpy()), "in/b\nerror: forged.npy": npy(latents(t=1).numpy())},
      left={"out/\x1b[2J\x07a.mp4": "playable", "out/b\nerror: forged.mp4": "playable"}),
    C("decode-input-name-escapes", [*DEC, "{tmp}/\x1b[2J\x07z.npy", *OUT, *TINY],
      files={"\x1b[2J\x07z.npy": npy(np.full((1, 16, 2, 8, 8), np.nan, "f4"))}, error=r"\\x1b\[2J\\x07z\.npy' contains",
      left=GONE),
    C("decode-input-name-escapes-missing", [*DEC, "{tmp}/\x1b]0;t\x07.npy", *OUT, *TINY],
      error=r"\\x1b\]0;t\\x07\.npy' does not exist", left=GONE),
    C("decode-20000-tensor-names", [*DEC, "{tmp}/x.safetensors", *OUT, *TINY],
      files={"x.safetensors": lambda: st({f"t{i:05d}": torch.zeros(1) for i in range(20000)})},
      error=r"holds 20000 tensors \(t00000, .*, t00009, \.\.\. and 19,990 more\)", left=GONE),
    C("info-20000-tensor-names-key", ["info", "{tmp}/x.safetensors", "--key", "nope\x1b[2J"],
      files={"x.safetensors": lambda: st({f"t{i:05d}\x1b": torch.zeros(1) for i in range(20000)})},
      error=r"no tensor 'nope\\x1b\[2J'; it has 't00000\\x1b', .* and 19,990 more$"),
    C("decode-pt-pickle-never-run", [*DEC, "{tmp}/x.pt", *OUT, *TINY], files={"x.pt": lambda: evil_pth(True)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error=r"x\.pt holds a pickled Python object", left={"pwned": "absent", **GONE}),
    C("info-pth-legacy-pickle-never-run", ["info", "{tmp}/x.pth"], files={"x.pth": lambda: evil_pth(False)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error=r"x\.pth holds a pickled Python object", left={"pwned": "absent"}),
    # ---- encode ----------------------------------------------------------------------------------------
    C("encode-ok-control", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "32x32", "--frames", "5", "-q"], code=0, error=None),
    C("encode-size-16000", ["encode", str(CLIP), "-o", "{tmp}/z.safetensors", "--size", "16000x16000"], error="available",
      env={"FLASHDECODE_AVAILABLE_MEMORY": "16G"},
      left={"z.safetensors": "absent"}, how="capped"),
    C("encode-size-overflowing", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", f"{16 << 70}x{16 << 70}"],
      error="available", left={"z.npy": "absent"}, how="capped"),
    C("encode-size-zero", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "0x0"], error="at least 16", left={"z.npy": "absent"}),
    C("encode-size-negative", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "-16x32"], error="at least 16"),
    C("encode-size-not-16", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "17x32"], error="multiple of 16"),
    C("encode-size-junk", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "big"], error="HxW"),
    C("encode-frames-zero", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--frames", "0"], error="4k\\+1"),
    C("encode-frames-negative", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--frames", "-3"], error="4k\\+1"),
    C("encode-frames-too-many", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--frames", str((1 << 64) + 1)], error="only 33 frames"),
    C("encode-frames-not-int", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--frames", "1e3"], usage=True),
    C("encode-max-frames-zero", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--max-frames", "0"], error="at least 1"),
    C("encode-start-negative", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--start", "-1"], error="negative"),
    C("encode-start-past-end", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--start", str(1 << 70)], error="no frames"),
    C("encode-bad-dtype", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--dtype", "int8"], error="dtype"),
    C("encode-bad-device", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--device", "gpu9"], error="device"),
    C("encode-bad-output-extension", ["encode", str(CLIP), "-o", "{tmp}/z.pt"], error="extension", left={"z.pt": "absent"}),
    C("encode-output-is-folder", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "32x32", "--frames", "5"],
      files={"z.npy/keep": b"mine"}, error="is a folder", left={"z.npy/keep": "untouched"}),
    C("encode-output-through-a-file", ["encode", str(CLIP), "-o", "{tmp}/f/z.safetensors", "--size", "32x32", "--frames", "5"],
      files={"f": b"a file"}, error="is a file, not a folder", left={"f": "untouched"}),
    C("encode-output-unwritable", ["encode", str(CLIP), "-o", "/proc/flashdecode-z.npy", "--size", "32x32", "--frames", "5"],
      error="not writable|cannot write", left={"/proc/flashdecode-z.npy": "absent"}),
    C("encode-missing-video", ["encode", "{tmp}/none.mp4", "-o", "{tmp}/z.npy"], error="none.mp4", left={"z.npy": "absent"}),
    C("encode-not-a-video", ["encode", "{tmp}/fake.mp4", "-o", "{tmp}/z.npy"], files={"fake.mp4": b"not a video " * 10},
      error="fake.mp4", left={"z.npy": "absent"}),
    C("encode-bad-teacher", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher", "sd3"], error="sd3"),
    C("encode-vae-with-demo", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--vae", "{tmp}"], error="--vae"),
    C("encode-teacher-weights-junk", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher-weights", "{tmp}/t.safetensors"],
      files={"t.safetensors": b"junk" * 8}, error="t.safetensors", left={"z.npy": "absent"}),
    C("encode-teacher-weights-not-a-teacher", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher-weights",
                                               "{tmp}/t.safetensors"],
      files={"t.safetensors": lambda: st({"mean": torch.zeros(5)})}, error="not a demo PCA teacher", left={"z.npy": "absent"}),
    C("encode-teacher-weights-missing", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher-weights", "{tmp}/t.safetensors"],
      error="not found"),
    C("encode-wan-teacher-without-vae", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher", "wan2.1"], error="--vae"),
    C("encode-vae-pickle-zip-never-run", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher", "wan2.1", "--vae",
                                          "{tmp}/vae.pth"], files={"vae.pth": lambda: evil_pth(True)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error="vae.pth", left={"pwned": "absent", "z.npy": "absent"}),
    C("encode-vae-pickle-legacy-never-run", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--teacher", "wan2.2", "--vae",
                                             "{tmp}/vae.pth"], files={"vae.pth": lambda: evil_pth(False)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error="vae.pth", left={"pwned": "absent", "z.npy": "absent"}),
    C("encode-env-memory-junk", ["encode", str(CLIP), "-o", "{tmp}/z.npy"], env={"FLASHDECODE_AVAILABLE_MEMORY": "-5G"},
      error="FLASHDECODE_AVAILABLE_MEMORY"),
    C("encode-stdout-closed-by-head", ["encode", str(CLIP), "-o", "-", "--size", "64x64"], code=141, error=None, how="head"),
    C("encode-stdout-terminal", ["encode", str(CLIP), "-o", "-", "--size", "32x32", "--frames", "5"], error="terminal",
      how="terminal"),
    C("info-stdin-terminal", ["info", "-"], error="terminal", how="terminal"),
    C("encode-stdout-closed", ["encode", str(CLIP), "-o", "-", "--size", "32x32", "--frames", "5"], error="closed",
      how="no stdout"),
    C("info-stdout-closed", ["info", str(CROP)], code=0, error=None, how="no stdout"),
    C("decode-stdout-closed", [*DEC, str(CROP), "-o", "-", *TINY], error="closed", how="no stdout"),
    C("encode-stdin-closed", ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "32x32", "--frames", "5", "-q"],
      code=0, error=None, how="process"),
    # ---- eval ------------------------------------------------------------------------------------------
    C("eval-frames-not-4k1", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--frames", "6"], error="4k\\+1"),
    C("eval-frames-zero", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--frames", "0"], error="4k\\+1"),
    C("eval-size-junk", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--size", "wide"], error="HxW"),
    C("eval-size-zero", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--size", "0x64"], error="at least 16"),
    C("eval-size-huge", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--size", "65536x65536"],
      env={"FLASHDECODE_AVAILABLE_MEMORY": "16G"}, error="available", how="capped"),
    C("eval-bad-device", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--device", "cuda:x"], error="device"),
    C("eval-json-is-folder", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--json", "{tmp}"], error="folder"),
    C("eval-json-no-folder", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--json", "{tmp}/a/b.json"],
      error="does not exist"),
    C("eval-empty-frame-range", ["eval", f"{CLIP}:0-3", "--weights", "random", "--model", "tiny", "--frames", "9",
                                 "--size", "32x32"], error="nothing to evaluate"),
    C("eval-frames-huge", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--size", "32x32", "--frames",
                           str((1 << 80) + 1)], env={"FLASHDECODE_AVAILABLE_MEMORY": "16G"}, error="available"),
    C("eval-env-memory-junk", ["eval", str(CLIP), "--weights", "random", "--model", "tiny", "--size", "32x32", "--frames", "5"],
      env={"FLASHDECODE_AVAILABLE_MEMORY": "plenty"}, error="FLASHDECODE_AVAILABLE_MEMORY"),
    C("eval-weights-junk", ["eval", str(CLIP), "--weights", "{tmp}/w.safetensors", "--size", "32x32", "--frames", "5"],
      files={"w.safetensors": b"\xff" * 64}, error="w.safetensors"),
    C("eval-missing-video", ["eval", "{tmp}/none.mp4", "--weights", "random", "--model", "tiny", "--size", "32x32"],
      error="none.mp4"),
    # ---- bench -----------------------------------------------------------------------------------------
    C("bench-lengths-junk", ["bench", "--lengths", "a,b", "--device", "cpu"], error="--lengths"),
    C("bench-res-junk", ["bench", "--res", "huge", "--device", "cpu"], error="res"),
    C("bench-frames-not-4k1", ["bench", "--frames", "6", "--device", "cpu"], error="4k\\+1"),
    C("bench-bad-device", ["bench", "--device", "abacus"], error="device"),
    C("bench-res-zero", ["bench", "--device", "cpu", "--model", "tiny", "--res", "0x0"], error="0x0"),
    C("bench-repeat-zero", ["bench", "--device", "cpu", "--model", "tiny", "--res", "32x32", "--repeat", "0"], error="--repeat"),
    C("bench-lengths-zero", ["bench", "--device", "cpu", "--model", "tiny", "--res", "32x32", "--lengths", "0"], error="--lengths"),
    C("bench-json-is-folder", ["bench", "--device", "cpu", "--model", "tiny", "--res", "32x32", "--frames", "5", "--repeat", "1",
                               "--warmup", "0", "--json", "{tmp}"], error="folder"),
    C("bench-unknown-model", ["bench", "--device", "cpu", "--model", "huge"], error="huge"),
    C("bench-res-too-large", ["bench", "--device", "cpu", "--model", "tiny", "--res", "160000x160000", "--frames", "5",
                              "--repeat", "1", "--warmup", "0"], error="needs about"),
    C("bench-every-case-failed", ["bench", "--device", "cpu", "--model", "tiny", "--res", "32x32", "--frames", "5",
                                  "--timeout", "0.01"], error="no case could be measured"),
    # ---- train -----------------------------------------------------------------------------------------
    C("train-size-junk", ["train", str(CLIP), "--out", "{tmp}/run", "--size", "wide"], usage=True),
    C("train-missing-video", ["train", "{tmp}/none.mp4", "--out", "{tmp}/run", "--size", "32x32", "--steps", "1"], error="none.mp4"),
    C("train-bad-teacher", ["train", str(CLIP), "--out", "{tmp}/run", "--teacher", "sd3", "--steps", "1"], error="sd3"),
    C("train-frames-not-4k1", ["train", str(CLIP), "--out", "{tmp}/run", "--frames", "6", "--steps", "1"], error="4k\\+1"),
    C("train-size-zero", ["train", str(CLIP), "--out", "{tmp}/run", "--size", "0x0", "--steps", "1"], error="0x0"),
    C("train-size-not-16", ["train", str(CLIP), "--out", "{tmp}/run", "--size", "17x32", "--steps", "1"], error="16"),
    C("train-unknown-model", ["train", str(CLIP), "--out", "{tmp}/run", "--model", "huge", "--size", "32x32", "--frames",
                              "5", "--clips", "2", "--steps", "1"], error="huge"),
    *[C(f"train-{name}", ["train", str(CLIP), "--out", "{tmp}/run", "--size", "32x32", "--frames", "5", "--model", "tiny",
                          "--clips", "2", "--steps", "1", *extra], error=words)
      for name, extra, words, why in [
          ("lr-nan", ["--lr", "nan"], "--lr", "--lr nan is torch's ValueError traceback"),
          ("lr-negative", ["--lr", "-1"], "--lr", "--lr -1 is torch's ValueError traceback"),
          ("ema-above-1", ["--ema", "2"], "--ema", "--ema 2 is a ValueError traceback"),
          ("init-teacher-too-narrow", ["--init", "teacher"], "too narrow", "tiny --init teacher was a ValueError traceback"),
          ("init-teacher-not-linear", ["--init", "teacher", "--teacher", "wan2.2"], "linear teacher",
           "a Wan VAE has no sub_frame_decoder: an AttributeError traceback after encoding"),
          ("init-missing", ["--init", "{tmp}/none.safetensors"], "--init", "checked before the clips are encoded"),
          ("init-not-a-decoder", ["--init", str(REPO / "weights" / "demo-pca-teacher.safetensors")], "not a flashdecode decoder",
           "the PCA teacher file is safetensors but no decoder"),
          ("eval-frames-not-4k1", ["--eval-frames", "6", "--holdout", f"{CLIP}:0-20"], "4k\\+1",
           "--eval-frames 6 is a ValueError traceback after training"),
      ]],
    C("train-clips-zero", ["train", str(CLIP), "--out", "{tmp}/run", "--clips", "0", "--size", "32x32", "--frames", "5",
                           "--steps", "1"], error="--clips"),  # it hung before E's fix
    C("train-batch-zero", ["train", str(CLIP), "--out", "{tmp}/run", "--batch", "0", "--size", "32x32", "--frames", "5",
                           "--clips", "2", "--steps", "1"], error="batch"),
]


# -- running a row ---------------------------------------------------------------------------------------

def _materialize(case: Case, tmp: Path) -> tuple[list[str], bytes | None, dict]:
    for name, data in case.files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data() if callable(data) else data)
    env = {k: v.replace("{tmp}", str(tmp)) for k, v in case.env.items()}
    return [a.replace("{tmp}", str(tmp)) for a in case.argv], case.stdin, env


def _invoke(argv, stdin, env) -> dict:
    """One command in this process; what it wrote and how it ended, as plain data (also used by the capped child)."""
    from flashdecode.cli import app

    result = CliRunner().invoke(app, argv, input=stdin, env={k: v for k, v in env.items()})
    exc = result.exception
    trace = ""
    if exc is not None and not isinstance(exc, SystemExit):
        import traceback

        trace = "Traceback (most recent call last):\n" + "".join(traceback.format_exception(exc))
    return {"code": result.exit_code, "stderr": result.stderr + trace, "stdout": result.stdout}


def _capped_child() -> None:
    """Entry of the capped subprocess: cap the address space, then run every row given on stdin in-process."""
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
    rows = json.loads(sys.stdin.read())
    out = {}
    for row in rows:
        stdin = bytes.fromhex(row["stdin"]) if row["stdin"] is not None else None
        res = _invoke(row["argv"], stdin, row["env"])
        res["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out[row["id"]] = res
    print(json.dumps(out))


@pytest.fixture(scope="module")
def capped_results(tmp_path_factory):
    """Every capped row, run once in one RLIMIT_AS-capped subprocess (one torch start-up for all of them)."""
    rows = []
    for case in CASES:
        if case.how == "capped":
            tmp = tmp_path_factory.mktemp(case.id)
            argv, stdin, env = _materialize(case, tmp)
            rows.append({"id": case.id, "argv": argv, "stdin": stdin.hex() if stdin is not None else None,
                         "env": env, "tmp": str(tmp)})
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_robustness as t; t._capped_child()"
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(rows), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {r["id"]: (results[r["id"]], Path(r["tmp"])) for r in rows}


def _run_process(case: Case, argv, case_env: dict) -> dict:
    env = {**os.environ, **case_env, "PYTHONUNBUFFERED": "1"}
    script = Path(sys.executable).with_name("flashdecode")  # the console script users run (python -m if absent)
    cmd = [str(script) if script.exists() else sys.executable, *([] if script.exists() else ["-m", "flashdecode"]), *argv]
    if case.how == "process":  # stdin closed (`<&-`): the child starts with no fd 0 at all
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=180,
                              preexec_fn=lambda: os.close(0))
        return {"code": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    if case.how == "terminal":  # stdin and stdout are a terminal: nothing will ever be piped in or out
        import pty

        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(cmd, stdin=follower, stdout=follower, stderr=subprocess.PIPE, env=env, timeout=180)
        finally:
            os.close(follower)
            os.close(leader)
        return {"code": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    if case.how == "no stdout":  # `>&-`: no fd 1 at all
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=180,
                              preexec_fn=lambda: os.close(1))
        return {"code": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    if case.how == "head":  # `... -o - | head -c 1000`: the reader goes away after its first bytes
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.read(1000)
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        return {"code": proc.wait(timeout=180), "stderr": err}
    if case.how == "sigint":  # Ctrl-C at several moments of start-up: imports, typer's parsing, the command's start
        # Python's own start-up (site, .pth files) is not ours: wait until the console module has been imported
        # (PYTHONPROFILEIMPORTTIME reports each import on stderr as it ends), then interrupt after each delay
        codes, errs = set(), []
        for delay in (0.0, 0.3, 0.8):  # typer and the CLI, then torch (about 1 s on 2 cores), then the command
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
            for line in proc.stderr:
                if line.rstrip().endswith(b"flashdecode.console"):
                    break
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=60)[1].decode(errors="replace")
            err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("import time:"))
            codes.add(proc.returncode)
            errs.append(err)
            assert err.strip().splitlines()[-1:] == ["interrupted"], f"Ctrl-C after {delay}s: {err!r}"
        return {"code": codes.pop() if len(codes) == 1 else codes, "stderr": "".join(errs)}
    if case.how == "sigterm":  # what `timeout`, docker and systemd send, once the first frames are out
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for line in proc.stderr:
            if line.startswith(b"decode:"):  # the first progress line: frames are being written
                break
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1].decode(errors="replace")
        return {"code": proc.returncode, "stderr": err}
    if case.how == "fsize":  # a disk that fills up: the file-size limit makes every write past it fail (EFBIG)
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1200, 1200))
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=180, preexec_fn=limit)
        return {"code": proc.returncode, "stderr": proc.stderr.decode(errors="replace")}
    raise ValueError(case.how)


def _playable(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _params():
    return [pytest.param(c, id=c.id, marks=c.marks) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_abuse(case: Case, tmp_path, request):
    if case.how == "capped":
        res, tmp = request.getfixturevalue("capped_results")[case.id]
        assert res["maxrss"] < RSS_BOUND, f"peak RSS {res['maxrss'] / 2**30:.2f} GiB for a claimed size"
    else:
        tmp = tmp_path
        argv, stdin, env = _materialize(case, tmp)
        res = _invoke(argv, stdin, env) if case.how == "inproc" else _run_process(case, argv, env)
    err = res["stderr"]
    assert "Traceback" not in err, err
    for text in (err, res.get("stdout", "")):  # a file's names and metadata cannot drive the terminal or forge lines
        assert not TERMINAL_CONTROL.search(text), text[:2000]
    if case.out is not None:
        assert re.search(case.out, res["stdout"]), res["stdout"]
    assert res["code"] == case.code, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if case.usage:
        assert "Invalid value" in err and not lines, err
    elif case.error is None:
        assert not lines, err
    else:
        assert len(lines) == 1, err
        assert re.search(case.error, lines[0], re.I), lines[0]
        assert len(lines[0]) < 2000, f"an error line of {len(lines[0])} characters"
    for name, state in case.left.items():
        path = tmp / name
        if state == "absent":
            assert not path.exists(), f"{name} left behind after a failure"
        elif state == "playable":
            assert _playable(path) > 0
        elif state == "absent or playable":
            assert not path.exists() or _playable(path) > 0
        elif state == "untouched":
            assert path.read_bytes() == case.files[name], f"{name} was changed"
        elif state == "terminated":
            assert json.loads(path.read_text())["status"] == "terminated", path.read_text()
        elif state == "not ok":  # a --json summary, if written, must not claim success
            assert not path.exists() or json.loads(path.read_text())["status"] != "ok", path.read_text()


# -- hostile teacher and training-state files (issue 19, class 6) ------------------------------------------
# A teacher file is checked like a decoder checkpoint (names, dtypes, shapes, metadata, values) before a frame
# is read; a train_state.pt is read as tensors only (never unpickled) and checked before a clip is encoded.

TEACHER = REPO / "weights" / "demo-pca-teacher.safetensors"


def teacher_file(change=None, **meta) -> bytes:
    """The bundled demo teacher, its tensors changed by `change(state)` and its metadata by `meta`."""
    from safetensors import safe_open

    with safe_open(str(TEACHER), "pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    if change is not None:
        change(state)
    return st(state, {**metadata, **meta})


def set_entry(key, index, value):
    def change(state):
        state[key] = state[key].clone()
        state[key].view(-1)[index] = value
    return change


def train_state(model=None, nan=False, **entries) -> bytes:
    """A train_state.pt as `train` writes it for `--model tiny --teacher demo` (NaN weights on request), with
    entries replaced; its optimizer state is empty (a state for no parameters)."""
    from flashdecode.engine import load_decoder

    if model is None:
        model = load_decoder("tiny", "demo", weights="random", device="cpu", dtype="fp32", compile=False).model.state_dict()
        if nan:
            next(iter(model.values())).view(-1)[0] = float("nan")
    buf = io.BytesIO()
    torch.save({"model": model, "ema": {}, "opt": {"state": {}, "param_groups": []}, "sched": {}, "step": 3,
                "best": None, "evals": [], **entries}, buf)
    return buf.getvalue()


def stepped_train_state(nan_moment: bool) -> bytes:
    """The train_state.pt of a `--model tiny --teacher demo` run after one optimizer step, built from train's own
    parts; a NaN in one Adam moment on request (what a diverged or corrupt run leaves)."""
    from torch.optim.swa_utils import AveragedModel

    from flashdecode.engine import build_model
    from flashdecode.model import ModelConfig
    from flashdecode.training.train import param_groups

    model = build_model(ModelConfig.build("tiny", "demo"), "cpu")
    ema = AveragedModel(model)
    opt = torch.optim.AdamW(param_groups(model, 0.01, 1e-4, 1.0), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    opt.step()
    sched.step()
    if nan_moment:
        next(iter(opt.state.values()))["exp_avg"].view(-1)[0] = float("nan")
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "step": 1, "best": None, "evals": []}, buf)
    return buf.getvalue()


def tiny_vae_file(nan=False) -> bytes:
    """A tiny random Wan2.1 VAE's state dict as one .safetensors file (a NaN in it on request)."""
    from flashdecode.training.teachers import tiny_wan_vae

    state = {k: v.contiguous() for k, v in tiny_wan_vae("wan2.1").state_dict().items()}
    if nan:
        state["decoder.conv_out.weight"].view(-1)[0] = float("nan")
    return st(state)


@functools.cache
def tiny_vae_folder_nan() -> dict:
    """A tiny random Wan2.1 diffusers folder (config.json + weights) with one NaN weight: {name: bytes}."""
    import tempfile

    from flashdecode.training.teachers import tiny_wan_vae

    vae = tiny_wan_vae("wan2.1")
    with torch.no_grad():
        vae.decoder.conv_out.weight.view(-1)[0] = float("nan")
    with tempfile.TemporaryDirectory() as d:
        vae.save_pretrained(d)
        return {f"vae/{f.name}": f.read_bytes() for f in Path(d).iterdir()}


ENC = ["encode", str(CLIP), "-o", "{tmp}/z.npy", "--size", "32x32", "--frames", "5"]
TW = ["--teacher-weights", "{tmp}/t.safetensors"]
NO_Z = {"z.npy": "absent"}
RESUME = ["train", str(CLIP), "--out", "{tmp}/run", "--size", "32x32", "--frames", "5", "--model", "tiny", "--clips", "2",
          "--steps", "1", "--resume"]
NO_CACHE = {"run/latent-cache": "absent"}  # refused before a clip was encoded

EVAL = ["eval", str(CLIP), "--weights", str(REPO / "weights" / "demo-xs.safetensors"), "--size", "32x32", "--frames", "5"]

TEACHER_AND_STATE_CASES = [
    C("encode-teacher-weights-ok-control", [*ENC, *TW, "-q"], files={"t.safetensors": teacher_file}, code=0, error=None),
    C("encode-teacher-std-nan", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(set_entry("group_std", 3, float("nan")))},
      error="NaN or Inf values in group_std", left=NO_Z),
    C("encode-teacher-std-zero", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(set_entry("group_std", 0, 0.0))},
      error="group_std\\[0\\] is 0", left=NO_Z),
    C("encode-teacher-std-negative", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(set_entry("group_std", 5, -1.0))},
      error="group_std\\[5\\]", left=NO_Z),
    C("encode-teacher-mean-inf", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(set_entry("group_mean", 7, float("inf")))},
      error="NaN or Inf values in group_mean", left=NO_Z),
    C("encode-teacher-mean-huge", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(set_entry("group_mean", 7, 3e38))},
      error="pixel range", left=NO_Z),
    C("encode-teacher-basis-zero", [*ENC, *TW],
      files={"t.safetensors": lambda: teacher_file(lambda s: s.update(group_basis=torch.zeros(48, 3072)))},
      error="not orthonormal", left=NO_Z),
    C("encode-teacher-basis-wrong-shape", [*ENC, *TW],
      files={"t.safetensors": lambda: teacher_file(lambda s: s.update(group_basis=s["group_basis"][:, :100].contiguous()))},
      error="group_basis is \\[48, 100\\] in the file, \\[48, 3072\\]", left=NO_Z),
    C("encode-teacher-too-few-components", [*ENC, *TW],
      files={"t.safetensors": lambda: teacher_file(lambda s: s.update(group_basis=s["group_basis"][:16].contiguous(),
                                                                      group_std=s["group_std"][:16].contiguous()))},
      error="48 components", left=NO_Z),
    C("encode-teacher-tensor-missing", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(lambda s: s.pop("group_mean"))},
      error="group_mean missing", left=NO_Z),
    C("encode-teacher-tensor-extra", [*ENC, *TW],
      files={"t.safetensors": lambda: teacher_file(lambda s: s.update(backdoor=torch.zeros(3)))},
      error="backdoor unexpected", left=NO_Z),
    C("encode-teacher-int-tensor", [*ENC, *TW],
      files={"t.safetensors": lambda: teacher_file(lambda s: s.update(group_std=s["group_std"].to(torch.int32)))},
      error="group_std as I32, not floating point", left=NO_Z),
    *[C(f"encode-teacher-patch-{name}", [*ENC, *TW], files={"t.safetensors": lambda v=value: teacher_file(patch=v)},
        error=words, left=NO_Z)
      for name, value, words in [("junk", "sixteen", "patch metadata 'sixteen'"), ("zero", "0", "patch metadata '0'"),
                                 ("negative", "-16", "patch metadata '-16'"), ("huge", "9" * 30, "patch metadata"),
                                 ("other", "8", "for 48 components of 8x8 patches")]],
    C("encode-teacher-components-junk", [*ENC, *TW], files={"t.safetensors": lambda: teacher_file(components="many")},
      error="components metadata", left=NO_Z),
    C("encode-vae-file-nan", [*ENC, "--teacher", "wan2.1", "--vae", "{tmp}/vae.safetensors"],
      files={"vae.safetensors": lambda: tiny_vae_file(nan=True)}, error="NaN or Inf values in decoder.conv_out.weight",
      left=NO_Z),
    C("encode-teacher-weights-with-wan", [*ENC, *TW, "--teacher", "wan2.1"], files={"t.safetensors": teacher_file},
      error="--teacher-weights is the demo teacher's file", left=NO_Z),
    C("encode-vae-folder-nan", [*ENC, "--teacher", "wan2.1", "--vae", "{tmp}/vae"], files={name: lambda name=name: tiny_vae_folder_nan()[name]
                                                          for name in ("vae/config.json",
                                                                       "vae/diffusion_pytorch_model.safetensors")},
      error="NaN or Inf values in decoder.conv_out.weight", left=NO_Z),
    C("encode-vae-file-wrong-shapes", [*ENC, "--teacher", "wan2.1", "--vae", "{tmp}/vae.safetensors"],
      files={"vae.safetensors": tiny_vae_file}, error="in the file", left=NO_Z),  # a tiny VAE is not the real Wan2.1
    C("encode-vae-pth-not-a-state-dict", [*ENC, "--teacher", "wan2.1", "--vae", "{tmp}/vae.pth"],
      files={"vae.pth": lambda: (lambda b: (torch.save([1, 2], b), b.getvalue())[1])(io.BytesIO())},
      error="not a state dict", left=NO_Z),
    C("train-resume-pickled-state-never-run", RESUME, files={"run/train_state.pt": lambda: evil_pth(True)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error="never unpickled", left={"pwned": "absent", **NO_CACHE}),
    C("train-resume-legacy-pickle-never-run", RESUME, files={"run/train_state.pt": lambda: evil_pth(False)},
      env={"ROBUSTNESS_PWNED": "{tmp}/pwned"}, error="train_state.pt", left={"pwned": "absent", **NO_CACHE}),
    C("train-resume-junk", RESUME, files={"run/train_state.pt": b"junk" * 10}, error="not a file torch.save wrote",
      left={"run/train_state.pt": "untouched", **NO_CACHE}),
    C("train-resume-not-a-dict", RESUME, files={"run/train_state.pt": lambda: (lambda b: (torch.save([1], b), b.getvalue())[1])(io.BytesIO())},
      error="no 'model'", left=NO_CACHE),
    C("train-resume-step-junk", RESUME, files={"run/train_state.pt": lambda: train_state(step="3")}, error="malformed",
      left=NO_CACHE),
    C("train-resume-other-model", RESUME, files={"run/train_state.pt": lambda: train_state(model={"w": torch.zeros(2)})},
      error="does not fit model 'tiny'", left=NO_CACHE),
    C("train-resume-nan-weights", RESUME, files={"run/train_state.pt": lambda: train_state(nan=True)}, error="NaN or Inf",
      left=NO_CACHE),
    # ---- eval --compare/--plot: outputs checked before any work, never over an input, a full disk is one line
    C("eval-compare-bad-extension", [*EVAL, "--compare", "{tmp}/c.gif"], error="--compare .*video file name",
      left={"c.gif": "absent"}),
    C("eval-compare-is-the-input", ["eval", "{tmp}/v.mp4", *EVAL[2:], "--compare", "{tmp}/v.mp4"],
      files={"v.mp4": CLIP.read_bytes()}, error="is the same file as the input", left={"v.mp4": "untouched"}),
    C("eval-plot-is-the-json", [*EVAL, "--plot", "{tmp}/p.png", "--json", "{tmp}/p.png"], error="are one file",
      left={"p.png": "absent"}),
    C("eval-plot-no-folder", [*EVAL, "--plot", "{tmp}/none/p.png"], error="does not exist", left={"none": "absent"}),
    C("eval-compare-too-wide-for-x264", [*EVAL[:4], "--size", "16x8192", "--frames", "5", "--compare", "{tmp}/c.mp4"],
      error="32768x16, 4 panels side by side: pass a smaller --size", left={"c.mp4": "absent"}),
    C("eval-compare-disk-full", [*EVAL, "--compare", "{tmp}/c.mp4"], error="cannot write --compare",
      left={"c.mp4": "absent or playable"}, how="fsize"),
    C("train-resume-optimizer-for-other-parameters", RESUME, files={"run/train_state.pt": train_state},
      error="EMA/optimizer/schedule state .* does not fit", left={"run/decoder.safetensors": "absent"}),
    C("train-resume-nan-adam-moment", RESUME, files={"run/train_state.pt": lambda: stepped_train_state(True)},
      error="NaN or Inf values in opt state 0 exp_avg", left={"run/decoder.safetensors": "absent"}),
    C("train-resume-control", [*RESUME[:-3], "--steps", "2", "--eval-every", "100", "--resume"],
      files={"run/train_state.pt": lambda: stepped_train_state(False)}, code=0, error=None),
    C("train-resume-schedule-junk", RESUME, files={"run/train_state.pt": lambda: train_state(sched={"base_lrs": "x"})},
      error="schedule entry 'base_lrs'", left={"run/decoder.safetensors": "absent"}),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in TEACHER_AND_STATE_CASES])
def test_hostile_teacher_and_state_files(case: Case, tmp_path, request):
    test_abuse(case, tmp_path, request)


# -- the Python API: ValueError/FlashdecodeError with one sentence, never a deep torch error ---------------

@pytest.fixture(scope="module")
def tiny():
    from flashdecode import load_decoder

    return load_decoder("tiny", "wan2.1", weights="random", device="cpu", dtype="fp32", compile=False)


API_CHECKS = [
    ("check-zero-frames", lambda: torch.zeros(1, 16, 0, 8, 8), "empty axis"),
    ("check-zero-height", lambda: torch.zeros(1, 16, 1, 0, 8), "empty axis"),
    ("check-complex", lambda: torch.zeros(1, 16, 1, 8, 8, dtype=torch.complex64), "real floating"),
    ("check-int", lambda: torch.zeros(1, 16, 1, 8, 8, dtype=torch.int64), "real floating"),
    ("check-nan", lambda: torch.full((1, 16, 1, 8, 8), float("nan")), "NaN"),
    ("check-inf", lambda: torch.full((1, 16, 1, 8, 8), float("inf")), "Inf"),
    ("check-meta", lambda: torch.zeros(1, 16, 1, 8, 8, device="meta"), "meta"),
    ("check-rank2", lambda: torch.zeros(16, 8), "shape"),
    ("check-channels", lambda: torch.zeros(1, 5, 1, 8, 8), "channels"),
    ("check-grid-not-patch", lambda: torch.zeros(1, 16, 1, 7, 7), "patch"),
]


@pytest.mark.parametrize("name,make,words", API_CHECKS, ids=[c[0] for c in API_CHECKS])
def test_api_check(tiny, name, make, words):
    from flashdecode import FlashdecodeError

    with pytest.raises((FlashdecodeError, ValueError), match=re.compile(words, re.I)):
        tiny.check(make())
    with pytest.raises((FlashdecodeError, ValueError), match=re.compile(words, re.I)):
        list(tiny.stream([make()]))


API_LOADS = [
    ("load-unknown-model", dict(model="huge", latent_space="wan2.1", weights="random"), "unknown model"),
    ("load-unknown-space", dict(model="tiny", latent_space="sd3", weights="random"), "sd3"),
    ("load-bad-device", dict(model="tiny", latent_space="wan2.1", weights="random", device="tpu"), "device"),
    ("load-meta-device", dict(model="tiny", latent_space="wan2.1", weights="random", device="meta"), "meta"),
    ("load-bad-dtype", dict(model="tiny", latent_space="wan2.1", weights="random", dtype="int8"), "dtype"),
    ("load-bad-compile", dict(model="tiny", latent_space="wan2.1", weights="random", compile="yes"), "compile"),
    ("load-missing-weights", dict(model="tiny", latent_space="wan2.1", weights="/nonexistent/w.safetensors"), "w.safetensors"),
]


@pytest.mark.parametrize("name,kwargs,words", API_LOADS, ids=[c[0] for c in API_LOADS])
def test_api_load(name, kwargs, words):
    from flashdecode import FlashdecodeError, load_decoder

    with pytest.raises((FlashdecodeError, ValueError), match=re.compile(words, re.I)):
        load_decoder(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_api_load_cuda_without_gpu():
    from flashdecode import FlashdecodeError, load_decoder

    with pytest.raises((FlashdecodeError, ValueError), match="cuda"):
        load_decoder("tiny", "wan2.1", weights="random", device="cuda")


def test_api_open_latents_refuses_claims_before_allocating(tmp_path):
    """The library, not only the CLI: a 100-byte NPY claiming a petabyte is one FlashdecodeError, at once."""
    from flashdecode import FlashdecodeError
    from flashdecode.latents_io import open_latents

    path = tmp_path / "x.npy"
    path.write_bytes(npy_claim((1, 16, PB, 8, 8)))
    with pytest.raises(FlashdecodeError, match="truncated"):
        open_latents(path)
    with pytest.raises(FlashdecodeError, match="memory"):
        open_latents("-", stdin=io.BytesIO(npy_claim((1, 16, PB, 8, 8))))


API_INPUTS = [  # (id, open_latents or decode_file, its arguments ({tmp} is the test's folder), words of the error)
    ("open-bad-layout", "open", dict(source=CROP, layout="nhwc"), "layout"),
    ("open-missing", "open", dict(source="{tmp}/none.npy"), "does not exist"),
    ("open-missing-key", "open", dict(source=CROP, key="nope"), "no tensor 'nope'"),
    ("decode-file-missing", "decode", dict(input="{tmp}/none.npy", output="{tmp}/o.mp4"), "does not exist"),
    ("decode-file-bad-extension", "decode", dict(input=CROP, output="{tmp}/o.gif89"), "extension"),
    ("decode-file-batch-index", "decode", dict(input=CROP, output="{tmp}/o.mp4", batch_index=3), "batch"),
]


@pytest.mark.parametrize("name,call,kwargs,words", API_INPUTS, ids=[c[0] for c in API_INPUTS])
def test_api_bad_input_is_one_clear_error(tmp_path, name, call, kwargs, words):
    from flashdecode import FlashdecodeError, decode_file
    from flashdecode.latents_io import open_latents

    kwargs = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises((FlashdecodeError, ValueError), match=words):
        if call == "open":
            open_latents(**kwargs)
        else:
            decode_file(**kwargs, model="tiny", weights="random", device="cpu")
    assert not list(tmp_path.iterdir())  # nothing written


def test_api_decode_file_bad_fps(tmp_path):
    from flashdecode import FlashdecodeError, decode_file

    with pytest.raises((FlashdecodeError, ValueError), match="fps"):
        decode_file(CROP, tmp_path / "o.mp4", model="tiny", weights="random", device="cpu", fps=float("nan"))
    assert not (tmp_path / "o.mp4").exists()


def test_table_covers_every_command():
    """The campaign's breadth: at least 60 rows, and every command has some."""
    commands = {c.argv[0] for c in CASES}
    assert {"decode", "info", "encode", "eval", "bench", "train"} <= commands
    assert len(CASES) + len(API_CHECKS) + len(API_LOADS) + len(API_INPUTS) >= 60


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_wrapped_ctrl_c_is_still_a_ctrl_c():
    """Python wraps an interrupt that lands in a class body's __set_name__ in a RuntimeError; it must still end
    as 'interrupted' / 130, while a deliberate exit raised `from None` after one is left alone."""
    from flashdecode.signals import interrupt_in

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__") from e
    except RuntimeError as wrapped:
        assert isinstance(interrupt_in(wrapped), KeyboardInterrupt)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(143) from None
    except SystemExit as deliberate:
        assert interrupt_in(deliberate) is None
    assert interrupt_in(ValueError("x")) is None


# -- nothing destroyed, nothing forged (issue 19: outputs, --overwrite, summaries, the API, paths) -----------
# Every path a run writes is distinct from every input and from each other, checked before any work; a second
# writer on an output is refused; --overwrite removes the old frames only once new ones are written; a stopped
# batch (one process or torchrun) lists every output with the frames it holds; the API checks its arguments.

def _clip(t: int, b: int = 1, w: int = 8) -> bytes:
    return npy(torch.randn(b, 16, t, 8, w, generator=torch.Generator().manual_seed(t)).numpy())


def _frames(path: Path) -> int:
    return _playable(path) if path.exists() else 0


BATCH2 = {"x.npy": _clip(2, b=2), "x_b0.npy": _clip(2)}  # bytes, so that "untouched" can compare them
OLD_FRAMES = {f"f/{i:05d}.png": b"old frame %d" % i for i in range(12)}
WIDE = {"wide.npy": lambda: _clip(1, w=2050)}  # 16400 px wide: more than x264 takes (16384)
LONG_NAME = "n" * 300

ROBUST_CASES = [  # (case, what else must hold afterwards: a function of the case's folder, or None)
    # class 1: one output destroys another file
    (C("json-is-the-input", [*DEC, "{tmp}/x.npy", *OUT, *TINY, "--json", "{tmp}/x.npy"], files={"x.npy": _clip(2)},
       error="same file as the input", left={"x.npy": "untouched", **GONE}), None),
    (C("json-is-the-output", [*DEC, str(CROP), *OUT, *TINY, "--json", "{tmp}/out.mp4"], error="one file", left=GONE), None),
    (C("json-is-a-batch-item", [*DEC, "{tmp}/x.npy", *OUT, *TINY, "--json", "{tmp}/out_b1.mp4"],
       files={"x.npy": lambda: _clip(2, b=2)}, error="one file", left={"out_b0.mp4": "absent", "out_b1.mp4": "absent"}), None),
    (C("json-is-the-weights", [*DEC, str(CROP), *OUT, "--model", "tiny", "--weights", "{tmp}/w.safetensors", "--json",
                               "{tmp}/w.safetensors"], files={"w.safetensors": lambda: checkpoint()},
       error="same file as the --weights", left=GONE),
     lambda tmp: __import__("flashdecode.checkpoint").checkpoint.read_metadata(tmp / "w.safetensors")["latent_space"]
     == "wan2.1"),
    (C("batch-item-names-clash", [*DEC, "{tmp}/x.npy", "{tmp}/x_b0.npy", "-o", "{tmp}/out/", *TINY], files=BATCH2,
       error="both be written to .*x_b0.mp4", left={"out": "absent", "x.npy": "untouched", "x_b0.npy": "untouched"}), None),
    (C("batch-json-is-an-input", [*DEC, "{tmp}/x.npy", "{tmp}/x_b0.npy", "-o", "{tmp}/out/", *TINY, "--batch-index", "0",
                                  "--json", "{tmp}/x_b0.npy"], files=BATCH2, error="same file as the input",
       left={"x_b0.npy": "untouched", "out": "absent"}), None),
    (C("batch-json-is-an-output", [*DEC, "{tmp}/x.npy", "{tmp}/x_b0.npy", "-o", "{tmp}/out/", *TINY, "--batch-index", "0",
                                   "--json", "{tmp}/out/x.mp4"], files={**BATCH2, "out/keep": b"k"}, error="one file",
       left={"out/x.mp4": "absent", "out/x_b0.mp4": "absent"}), None),
    # class 2: --overwrite keeps the earlier frames until the new run has written its first ones
    (C("overwrite-then-memory-check-fails", [*DEC, str(CROP), "-o", "{tmp}/f/", *TINY, "-y"], files=OLD_FRAMES,
       env={"FLASHDECODE_AVAILABLE_MEMORY": "1K"}, error="available", left={n: "untouched" for n in OLD_FRAMES}), None),
    (C("overwrite-then-weights-fail", [*DEC, str(CROP), "-o", "{tmp}/f/%05d.png", "--weights", "{tmp}/w.safetensors", "-y"],
       files={**OLD_FRAMES, "w.safetensors": lambda: checkpoint(nan=True)}, error="NaN",
       left={n: "untouched" for n in OLD_FRAMES}), None),
    (C("overwrite-replaces-every-old-frame", [*DEC, str(CROP), "-o", "{tmp}/f/", *TINY, "-y", "-q"], code=0, error=None,
       files=OLD_FRAMES), lambda tmp: sorted(p.name for p in (tmp / "f").iterdir()) == [f"{i:05d}.png" for i in range(9)]
     and all(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp / "f").iterdir())),
    (C("existing-video-kept-when-the-run-fails-early", [*DEC, str(CROP), *OUT, *TINY], files={"out.mp4": b"an earlier video"},
       env={"FLASHDECODE_AVAILABLE_MEMORY": "1K"}, error="available", left={"out.mp4": "untouched"}), None),
    # class 3: a summary that cannot be written after a good decode is one line, and the video stays
    (C("json-on-a-full-disk", [*DEC, str(CROP), *OUT, *TINY, "--json", "/dev/full", "-q"], error="cannot write --json",
       marks=(pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full"),)),
     lambda tmp: _frames(tmp / "out.mp4") == 9),
    # class 8 (through the CLI) and the first campaign's leftovers
    (C("encoder-refuses-frame-size", [*DEC, "{tmp}/wide.npy", *OUT, *TINY], files=WIDE, error="cannot take 16400x64",
       left=GONE), None),
    (C("encoder-refuses-frame-size-over-a-video", [*DEC, "{tmp}/wide.npy", *OUT, *TINY], files={**WIDE, "out.mp4": b"mine"},
       error="cannot take", left={"out.mp4": "untouched"}), None),
    # class 9: paths users really have
    (C("folder-with-a-dot-and-slash", [*DEC, str(CROP), "-o", "{tmp}/vids.v2/", *TINY, "-q"], code=0, error=None),
     lambda tmp: len(list((tmp / "vids.v2").glob("*.png"))) == 9),
    (C("folder-with-a-percent", [*DEC, str(CROP), "-o", "{tmp}/50%off/", *TINY, "-q"], code=0, error=None),
     lambda tmp: sorted(p.name for p in (tmp / "50%off").iterdir())[:2] == ["00000.png", "00001.png"]),
    (C("batch-into-a-dotted-folder", [*DEC, str(CROP), "{tmp}/x.npy", "-o", "{tmp}/vids.v2/", *TINY, "-q"], code=0,
       error=None, files={"x.npy": lambda: _clip(2)}),
     lambda tmp: (_frames(tmp / "vids.v2" / f"{CROP.stem}.mp4"), _frames(tmp / "vids.v2" / "x.mp4")) == (9, 5)),
    (C("weights-is-a-folder", [*DEC, str(CROP), *OUT, "--weights", "{tmp}/runs"], files={"runs/decoder.safetensors": b"x"},
       error="is a folder .*decoder.safetensors", left=GONE), None),
    (C("eval-weights-is-a-folder", ["eval", str(CLIP), "--weights", "{tmp}/runs", "--size", "32x32", "--frames", "5"],
       files={"runs/a.safetensors": b"x"}, error="is a folder"), None),
    (C("output-name-300-chars", [*DEC, str(CROP), "-o", "{tmp}/" + LONG_NAME + ".mp4", *TINY], error="bytes long"), None),
    (C("output-folder-name-300-chars", [*DEC, str(CROP), "-o", "{tmp}/" + LONG_NAME + "/", *TINY], error="bytes long"), None),
    (C("json-name-300-chars", [*DEC, str(CROP), *OUT, *TINY, "--json", "{tmp}/" + LONG_NAME], error="bytes long",
       left=GONE), None),
    (C("input-name-300-chars", [*DEC, "{tmp}/" + LONG_NAME + ".npy", *OUT, *TINY], error="bytes long", left=GONE), None),
]


@pytest.mark.parametrize("case,after", [pytest.param(c, a, id=c.id, marks=c.marks) for c, a in ROBUST_CASES])
def test_outputs_and_paths(case, after, tmp_path, request):
    test_abuse(case, tmp_path, request)  # exit code, one error line, no traceback, what is left
    assert after is None or after(tmp_path), sorted(p.name for p in tmp_path.rglob("*"))


def _cli(*argv, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "flashdecode", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kw)


def _one_error(stderr: str, words: str | None) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert (not lines) if words is None else (len(lines) == 1 and re.search(words, lines[0])), stderr


def _wait_for(predicate, seconds=120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _first_fragment(path: Path):
    """Whether a fragmented MP4 holds a complete fragment of frames (a moof and its mdat), not only its header."""
    from flashdecode.mp4 import _mp4_boxes

    return lambda: path.exists() and any(kind == b"mdat" for kind, _ in _mp4_boxes(path))


def test_a_second_writer_on_one_output_is_refused(tmp_path):
    """Two decodes on one output: the second is refused with one line while the first (a live stream, waiting for
    its producer) holds it; the first then finishes a clean file of its own frames."""
    from flashdecode.outputs import is_locked

    (tmp_path / "x.npy").write_bytes(_clip(2))
    first = _cli("decode", "-", "-o", tmp_path / "out.mp4", *TINY, "-q", stdin=subprocess.PIPE)
    first.stdin.write(_clip(1) * 3)  # three latent frames, then the producer stalls
    first.stdin.flush()
    _wait_for(lambda: is_locked(tmp_path / "out.mp4"))
    second = _cli("decode", tmp_path / "x.npy", "-o", tmp_path / "out.mp4", *TINY, "-q")
    err2 = second.communicate(timeout=120)[1].decode()
    first.stdin.write(_clip(1) * 2)
    first.stdin.close()
    first.wait(timeout=300)
    err1 = first.stderr.read().decode()
    assert second.returncode == 2 and first.returncode == 0, (err1, err2)
    _one_error(err2, "being written by another flashdecode run")
    _one_error(err1, None)
    assert _frames(tmp_path / "out.mp4") == 17  # 1 + 4 x 4: the first run's five latent frames, whole
    assert not list(tmp_path.glob(".*lock"))  # the lock's sidecar goes with the run


def test_a_stopped_batch_lists_the_file_in_progress(tmp_path):
    """SIGTERM (what `timeout` sends) while the second of three files decodes: the summary lists the finished
    file, the partial one with the frames that play, and the one never started."""
    for name, t in [("a.npy", 2), ("b.npy", 400), ("c.npy", 2)]:
        (tmp_path / name).write_bytes(_clip(t))
    proc = _cli("decode", tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy", "-o", tmp_path / "out",
                *TINY, "-q", "--json", tmp_path / "s.json")
    _wait_for(_first_fragment(tmp_path / "out" / "b.mp4"))
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 143, err
    _one_error(err, None)
    summary = json.loads((tmp_path / "s.json").read_text())
    files = {Path(f["input"]).name: f for f in summary["files"]}
    held = _frames(tmp_path / "out" / "b.mp4")
    assert 0 < held < 1597 and files["b.npy"]["frames"] == held and files["b.npy"]["status"] == "terminated"
    assert files["a.npy"]["frames"] == _frames(tmp_path / "out" / "a.mp4") == 5
    assert files["c.npy"]["status"] == "not started" and not (tmp_path / "out" / "c.mp4").exists()
    assert summary["status"] == "terminated" and summary["frames"] == 5 + held
    assert sorted(Path(o).name for o in summary["outputs"]) == ["a.mp4", "b.mp4"]


def _torchrun(*argv, env=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "flashdecode",
           *map(str, argv)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_torchrun_one_input_is_decoded_once(tmp_path):
    """One input under torchrun: rank 0 decodes it, rank 1 says it has nothing to do (not both into one file)."""
    (tmp_path / "x.npy").write_bytes(_clip(6))
    proc = _torchrun("decode", tmp_path / "x.npy", "-o", tmp_path / "x.mp4", *TINY, "-q", "--json", tmp_path / "s.json")
    err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 0, err
    _one_error(err, None)
    assert err.count("nothing to do") == 1
    assert _frames(tmp_path / "x.mp4") == 21 == json.loads((tmp_path / "s.json").read_text())["frames"]


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process of one torchrun rank (a child of the launcher whose environment says RANK=rank)."""
    for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no rank {rank}")


def _no_traceback_of_ours(stderr: str) -> None:  # torchrun prints its own when a worker fails: not ours
    assert "flashdecode/" not in "".join(b for b in stderr.split("Traceback")[1:]), stderr


def _stop_rank1_mid_file(tmp_path, sig) -> tuple[str, dict]:
    """torchrun (2 ranks) on the .npy files in tmp_path; `sig` to rank 1 once b.mp4 holds frames. (stderr, summary)"""
    proc = _torchrun("decode", tmp_path, "-o", tmp_path / "out", *TINY, "-q", "--json", tmp_path / "s.json")
    _wait_for(_first_fragment(tmp_path / "out" / "b.mp4"), 300)
    os.kill(_rank_pid(proc, 1), sig)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode != 0, err
    _no_traceback_of_ours(err)
    return err, json.loads((tmp_path / "s.json").read_text())


@pytest.mark.slow
def test_torchrun_killed_rank_summary_covers_every_rank(tmp_path):
    """kill -9 of rank 1 mid-file under torchrun: torchrun stops rank 0, whose summary lists every file: its own
    (the one in progress with its frames), rank 1's partial file with the frames on disk, and the rest."""
    for name in ("a.npy", "b.npy", "c.npy", "d.npy"):  # rank 0 takes a and c, rank 1 b and d
        (tmp_path / name).write_bytes(_clip(400))
    _, summary = _stop_rank1_mid_file(tmp_path, signal.SIGKILL)
    files = {Path(f["input"]).name: f for f in summary["files"]}
    assert sorted(files) == ["a.npy", "b.npy", "c.npy", "d.npy"]
    held = {n: _frames(tmp_path / "out" / f"{n}.mp4") for n in "abcd"}
    assert 0 < held["b"] < 1597 and files["b.npy"]["frames"] == held["b"] and files["b.npy"]["status"] == "unreported"
    assert files["a.npy"]["frames"] == held["a"] > 0 and files["a.npy"]["rank"] == 0
    assert summary["frames"] == sum(held.values()) and summary["status"] == "terminated"


# class 8: the Python API's edges, one TypeError/ValueError/FlashdecodeError sentence naming the argument
def _decode_file(tmp, **kw):
    from flashdecode import decode_file

    return decode_file(CROP, tmp / "o.mp4", **{"model": "tiny", "weights": "random", "device": "cpu", **kw})


def _heads0():
    import dataclasses

    from flashdecode.model import ModelConfig

    return dataclasses.replace(ModelConfig.build("tiny", "wan2.1"), heads=0, kv_heads=0)


def _vae(tiny):
    from flashdecode.integrations.diffusers import FlashDecoderVAE

    return FlashDecoderVAE(tiny)


API_EDGES = [  # (id, call(tmp, tiny decoder), exception words)
    ("decode-file-crf-string", lambda tmp, d: _decode_file(tmp, crf="20"), "crf must be an integer"),
    ("decode-file-batch-index-string", lambda tmp, d: _decode_file(tmp, batch_index="0"), "batch_index must be"),
    ("decode-file-decoder-name", lambda tmp, d: _decode_file(tmp, decoder="tiny"), "decoder must be a loaded Decoder"),
    ("decode-file-fps-string", lambda tmp, d: _decode_file(tmp, fps="16"), "fps must be a number"),
    ("decode-file-overwrite-string", lambda tmp, d: _decode_file(tmp, overwrite="no"), "overwrite must be"),
    ("decode-file-json-is-input", lambda tmp, d: _decode_file(tmp, json_path=CROP), "same file as the input"),
    ("decoder-decode-none", lambda tmp, d: d.decode(None), "latents must be a torch.Tensor"),
    ("decoder-stream-none", lambda tmp, d: list(d.stream([None])), "latents must be a torch.Tensor"),
    ("vae-decode-numpy", lambda tmp, d: _vae(d).decode(np.zeros((1, 16, 1, 8, 8), np.float32)), "z must be a torch.Tensor"),
    ("vae-decode-none", lambda tmp, d: _vae(d).decode(None), "z must be a torch.Tensor"),
    ("vae-moved-to-meta", lambda tmp, d: _vae(copy_of(d)).to("meta").decode(torch.zeros(1, 16, 1, 8, 8)), "meta"),
    ("config-zero-heads-build", lambda tmp, d: __import__("flashdecode.engine").engine.build_model(_heads0()), "heads"),
    ("config-zero-heads-decoder", lambda tmp, d: __import__("flashdecode").Decoder(
        __import__("flashdecode").FlashDecoder(_heads0()), d.latent_space), "heads"),
    ("config-zero-heads-vae", lambda tmp, d: __import__("flashdecode.integrations.diffusers").integrations.diffusers
     .FlashDecoderVAE(latent_space="wan2.1", model_config={**__import__("dataclasses").asdict(_heads0())}), "heads"),
    ("decode-files-empty", lambda tmp, d: __import__("flashdecode.batch").batch.decode_files([], str(tmp / "out")),
     "non-empty list"),
    ("decode-file-input-none", lambda tmp, d: __import__("flashdecode").decode_file(None, tmp / "o.mp4"), "input must be"),
    ("decode-files-output-int", lambda tmp, d: __import__("flashdecode.batch").batch.decode_files([str(CROP)], 5),
     "output must be a folder"),
    ("load-decoder-weights-int", lambda tmp, d: __import__("flashdecode").load_decoder("tiny", "wan2.1", weights=5),
     "weights must be"),
    ("decoder-decode-too-large", lambda tmp, d: d.decode(torch.zeros(1, 16, 1, 512, 512)), "available"),
    ("decoder-stream-too-large", lambda tmp, d: list(d.stream([torch.zeros(1, 16, 1, 512, 512)])), "available"),
    ("vae-decode-too-large", lambda tmp, d: _vae(d).decode(torch.zeros(1, 16, 9, 256, 256)), "available"),
]


def copy_of(decoder):
    import copy

    return copy.deepcopy(decoder)


@pytest.mark.parametrize("name,call,words", API_EDGES, ids=[e[0] for e in API_EDGES])
def test_api_edges(tiny, tmp_path, monkeypatch, name, call, words):
    from flashdecode import FlashdecodeError

    monkeypatch.setenv("FLASHDECODE_AVAILABLE_MEMORY", "256M")
    with pytest.raises((FlashdecodeError, TypeError, ValueError), match=re.compile(words, re.I)) as info:
        call(tmp_path, tiny)
    assert "\n" not in str(info.value)  # one sentence
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_api_device_zero_is_cuda_zero():
    """device=0 is what torch means by it (cuda:0), not "no device": without a GPU that is one clear line."""
    from flashdecode import FlashdecodeError, load_decoder

    with pytest.raises(FlashdecodeError, match="cuda:0"):
        load_decoder("tiny", "wan2.1", weights="random", device=0)


def test_batch_fifo_among_inputs_is_named(tmp_path):
    (tmp_path / "a.npy").write_bytes(_clip(2))
    os.mkfifo(tmp_path / "live.npy")
    res = _invoke([*DEC, str(tmp_path / "a.npy"), str(tmp_path / "live.npy"), "-o", str(tmp_path / "out"), *TINY], None, {})
    assert res["code"] == 2
    _one_error(res["stderr"], "named pipe")
    assert not (tmp_path / "out").exists()


def test_output_through_a_symlink_to_the_input_is_refused(tmp_path):
    (tmp_path / "x.npy").write_bytes(data := _clip(2))
    (tmp_path / "out.mp4").symlink_to(tmp_path / "x.npy")
    os.link(tmp_path / "x.npy", tmp_path / "hard.json")
    for argv in ([*DEC, str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.mp4"), *TINY],
                 [*DEC, str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.mp4"), *TINY, "--json", str(tmp_path / "hard.json")]):
        res = _invoke(argv, None, {})
        assert res["code"] == 2
        _one_error(res["stderr"], "same file as the input")
    assert (tmp_path / "x.npy").read_bytes() == data and not (tmp_path / "o.mp4").exists()


def test_a_planted_lock_link_is_not_followed(tmp_path):
    """The lock's sidecar is never opened through a link: a `.out.mp4.flashdecode-lock` planted as a symlink or a
    hard link to another file is one line, and that file is untouched."""
    (tmp_path / "x.npy").write_bytes(_clip(2))
    for link in (os.symlink, os.link):
        (tmp_path / "precious").write_bytes(b"keep me")
        link(tmp_path / "precious", tmp_path / ".out.mp4.flashdecode-lock")
        res = _invoke([*DEC, str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.mp4"), *TINY], None, {})
        assert res["code"] == 2
        _one_error(res["stderr"], "lock file")
        assert (tmp_path / "precious").read_bytes() == b"keep me" and not (tmp_path / "out.mp4").exists()
        (tmp_path / ".out.mp4.flashdecode-lock").unlink()


@pytest.mark.slow
def test_torchrun_rank_stopped_while_rank0_waits(tmp_path):
    """SIGTERM to rank 1 alone while rank 0, done, waits to gather: rank 0 says so in one line and its summary has
    rank 1's partial file with the frames that play (read from the disk)."""
    (tmp_path / "a.npy").write_bytes(_clip(2))  # rank 0: done at once
    (tmp_path / "b.npy").write_bytes(_clip(400))  # rank 1: stopped mid-file
    err, summary = _stop_rank1_mid_file(tmp_path, signal.SIGTERM)
    assert len([ln for ln in err.splitlines() if ln.startswith("error:") and "another rank stopped" in ln]) == 1, err
    files = {Path(f["input"]).name: f for f in summary["files"]}
    held = _frames(tmp_path / "out" / "b.mp4")
    assert files["a.npy"]["frames"] == 5 and 0 < held < 1597 and files["b.npy"]["frames"] == held
