"""latents_io: files, NPY streams read as they arrive, layouts, ranks, and one-line errors for bad input."""
import io
import json
import re
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from flashdecode.errors import FlashdecodeError
from flashdecode.latents_io import describe, guess_layout, iter_npy_stream, open_latents

DATA = Path(__file__).parent / "data"
CROP = DATA / "wan21_crop_3lat_8x8.safetensors"  # real Wan2.1 latents (1,16,3,8,8), see data/README.md


def npy_bytes(*arrays) -> bytes:
    buf = io.BytesIO()
    for a in arrays:
        np.save(buf, a)
    return buf.getvalue()


def all_chunks(lat):
    return torch.cat(list(lat.chunks), dim=2)


# -- files -------------------------------------------------------------------------------------------

def test_real_crop_uses_metadata():
    lat = open_latents(CROP)
    assert lat.shape == (1, 16, 3, 8, 8) and lat.dtype == "bfloat16"
    assert (lat.layout, lat.layout_reason) == ("ncthw", "file metadata")
    assert lat.latent_space_guess() == ("wan2.1", "file metadata")
    chunks = list(lat.chunks)
    assert len(chunks) == 3 and all(c.shape == (1, 16, 1, 8, 8) for c in chunks)  # one latent frame at a time
    d = describe(open_latents(CROP))
    assert (d["pixel_frames"], d["width"], d["height"], d["latent_space"]) == (9, 64, 64, "wan2.1")


def test_safetensors_only_tensor_and_key(tmp_path):
    z = torch.randn(1, 48, 2, 4, 4)
    save_file({"anything": z}, tmp_path / "one.safetensors")
    assert torch.equal(all_chunks(open_latents(tmp_path / "one.safetensors")), z)
    save_file({"a": z, "b": z[:, :16].clone()}, tmp_path / "two.safetensors")
    with pytest.raises(FlashdecodeError, match="holds 2 tensors.*--key"):
        open_latents(tmp_path / "two.safetensors")
    assert open_latents(tmp_path / "two.safetensors", key="b").channels == 16
    with pytest.raises(FlashdecodeError, match="no tensor 'c'; it has a, b"):
        open_latents(tmp_path / "two.safetensors", key="c")


def test_npy_file_and_space_guess(tmp_path):
    z = np.random.randn(48, 3, 4, 4).astype(np.float16)  # [C,t,h,w]: no batch axis
    np.save(tmp_path / "z.npy", z)
    lat = open_latents(tmp_path / "z.npy")
    assert lat.shape == (1, 48, 3, 4, 4) and lat.latent_space_guess()[0] == "wan2.2"
    assert np.array_equal(all_chunks(lat)[0].numpy(), z)


def test_layouts(tmp_path):
    z = torch.randn(2, 48, 3, 4, 4)
    np.save(tmp_path / "ntchw.npy", z.transpose(1, 2).numpy())  # [B,T,C,h,w], as TAEHV writes it
    lat = open_latents(tmp_path / "ntchw.npy")
    assert (lat.layout, lat.layout_reason) == ("ntchw", "channel count 48")
    assert torch.equal(all_chunks(lat), z)
    # 16 channels and 16 frames: ambiguous, so the canonical NCTHW unless told
    assert guess_layout((1, 16, 16, 8, 8)) == ("ncthw", "default (ambiguous: pass --layout)")
    assert guess_layout((1, 16, 16, 8, 8), metadata={"layout": "NTCHW"})[0] == "ntchw"
    assert guess_layout((16, 48, 8, 8), channels={16})[0] == "ncthw"  # the model's channel count decides
    sq = torch.randn(1, 16, 16, 2, 2)
    np.save(tmp_path / "sq.npy", sq.numpy())
    assert torch.equal(all_chunks(open_latents(tmp_path / "sq.npy", layout="ntchw")), sq.transpose(1, 2))


def test_single_frame_rank3(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((16, 4, 6), np.float32))
    assert open_latents(tmp_path / "f.npy").shape == (1, 16, 1, 4, 6)


@pytest.mark.parametrize("shape", [(16, 4), (1, 1, 16, 2, 4, 4)])
def test_wrong_rank(tmp_path, shape):
    np.save(tmp_path / "r.npy", np.zeros(shape, np.float32))
    with pytest.raises(FlashdecodeError, match=f"rank {len(shape)}.*\\[C,h,w\\]"):
        open_latents(tmp_path / "r.npy")


def test_nan_inf_says_how_many_and_where(tmp_path):
    z = np.zeros((1, 16, 4, 3, 3), np.float32)
    z[0, 5, 2, 1, 0] = np.nan
    z[0, 7, 3, 0, 0] = np.nan
    z[0, 1, 3, 2, 2] = np.inf
    np.save(tmp_path / "bad.npy", z)
    with pytest.raises(FlashdecodeError, match="2 NaN and 1 Inf.*batch 0, channel 5, latent frame 2, row 1, col 0"):
        open_latents(tmp_path / "bad.npy")


def test_file_errors(tmp_path):
    with pytest.raises(FlashdecodeError, match="does not exist"):
        open_latents(tmp_path / "missing.safetensors")
    (tmp_path / "z.pkl").write_bytes(b"x")
    with pytest.raises(FlashdecodeError, match="unknown input extension '.pkl'"):
        open_latents(tmp_path / "z.pkl")
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(FlashdecodeError, match="is a directory"):
        open_latents(tmp_path / "d.npy")
    data = CROP.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(FlashdecodeError, match="truncated or not a valid safetensors"):
        open_latents(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(FlashdecodeError, match="not a valid safetensors"):
        open_latents(tmp_path / "junk.safetensors")
    npy = npy_bytes(np.zeros((16, 2, 4, 4), np.float32))
    (tmp_path / "cut.npy").write_bytes(npy[:-10])
    with pytest.raises(FlashdecodeError, match="truncated: its header promises 2048 bytes of data, got 2038"):
        open_latents(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(FlashdecodeError, match="not a valid .npy"):
        open_latents(tmp_path / "junk.npy")
    (tmp_path / "hdr.npy").write_bytes(npy[:8] + b"\x10\x00{'descr': nonsense")
    with pytest.raises(FlashdecodeError, match="corrupt NPY header"):
        open_latents(tmp_path / "hdr.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FlashdecodeError, match="Python objects.*never"):
        open_latents(tmp_path / "obj.npy")


# -- stdin ---------------------------------------------------------------------------------------------

def test_npy_stream_mixed_ranks_and_ntchw():
    f0 = np.random.randn(16, 4, 4).astype(np.float32)  # a frame
    c1 = np.random.randn(2, 16, 4, 4).astype(np.float32)  # a chunk, NTCHW (2 is no channel count)
    c2 = np.random.randn(1, 16, 16, 4, 4).astype(np.float32)  # ambiguous alone: the stream is NTCHW by now
    lat = open_latents("-", stdin=io.BytesIO(npy_bytes(f0, c1, c2)))
    assert lat.shape == (1, 16, None, 4, 4)
    z = all_chunks(lat)
    assert z.shape == (1, 16, 1 + 2 + 16, 4, 4)
    assert torch.equal(z[0, :, 0], torch.from_numpy(f0))
    assert torch.equal(z[0, :, 1:3], torch.from_numpy(c1).transpose(0, 1))
    assert torch.equal(z[0, :, 3:], torch.from_numpy(c2[0]).transpose(0, 1))


def test_npy_stream_is_read_as_it_arrives():
    """The first array is yielded while the producer has not even written the second one."""
    r, w = os.pipe()
    second_written = threading.Event()
    first_seen = threading.Event()

    def produce():
        with os.fdopen(w, "wb") as fp:
            fp.write(npy_bytes(np.ones((16, 2, 2), np.float32)))  # np.save(pipe) needs ftell; bytes do not
            fp.flush()
            first_seen.wait(10)
            second_written.set()
            fp.write(npy_bytes(np.zeros((16, 2, 2), np.float32)))

    threading.Thread(target=produce, daemon=True).start()
    with os.fdopen(r, "rb") as fp:
        arrays = iter_npy_stream(fp)
        first = next(arrays)
        assert not second_written.is_set() and first.sum() == 64
        first_seen.set()
        assert [a.sum() for a in arrays] == [0]


def test_safetensors_on_stdin():
    z = torch.randn(1, 16, 2, 4, 4)
    lat = open_latents("-", stdin=io.BytesIO(save({"latents": z}, metadata={"latent_space": "wan2.1"})))
    assert lat.metadata["latent_space"] == "wan2.1" and torch.equal(all_chunks(lat), z)


def test_stream_errors():
    with pytest.raises(FlashdecodeError, match="stdin is empty"):
        open_latents("-", stdin=io.BytesIO(b""))
    with pytest.raises(FlashdecodeError, match="neither NPY arrays"):
        open_latents("-", stdin=io.BytesIO(b"hello world, not latents"))
    a = np.zeros((16, 4, 4), np.float32)
    lat = open_latents("-", stdin=io.BytesIO(npy_bytes(a, a)[:-7]))
    with pytest.raises(FlashdecodeError, match="stdin array 1 is truncated"):
        list(lat.chunks)
    lat = open_latents("-", stdin=io.BytesIO(npy_bytes(a, np.zeros((16, 4, 8), np.float32))))
    with pytest.raises(FlashdecodeError, match="array 1 has shape \\[16, 4, 8\\].*grid 4x4"):
        list(lat.chunks)
    bad = a.copy()
    bad[3, 1, 1] = np.inf
    lat = open_latents("-", stdin=io.BytesIO(npy_bytes(a, a, bad)))
    with pytest.raises(FlashdecodeError, match="array 2 contains 0 NaN and 1 Inf.*channel 3, latent frame 2"):
        list(lat.chunks)


# -- claimed sizes are checked before anything is allocated ------------------------------------------------

def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def st_stream(header: dict, payload: bytes = b"\0" * 64) -> io.BytesIO:
    raw = json.dumps(header).encode()
    return io.BytesIO(struct.pack("<Q", len(raw)) + raw + payload)


def test_npy_claims_checked_against_file_size_and_memory(tmp_path, monkeypatch):
    (tmp_path / "huge.npy").write_bytes(npy_header((1, 16, 10**9, 10**4, 10**4)) + b"\0" * 64)
    with pytest.raises(FlashdecodeError, match="truncated: its header promises 6400000000000000000 bytes of data, got 64"):
        open_latents(tmp_path / "huge.npy")
    monkeypatch.setenv("FLASHDECODE_AVAILABLE_MEMORY", "1G")
    with pytest.raises(FlashdecodeError, match=r"stdin array 0 \(shape \[16, 100000, 100000\]\) needs about .* only 1.0 GiB"):
        list(open_latents("-", stdin=io.BytesIO(npy_header((16, 10**5, 10**5)) + b"\0" * 64)).chunks)
    # within the memory but not sent: allocated only as bytes arrive, so the lie fails at EOF
    with pytest.raises(FlashdecodeError, match="stdin array 0 is truncated: its header promises 536870912 bytes of data, got 64"):
        open_latents("-", stdin=io.BytesIO(npy_header((16, 2048, 4096)) + b"\0" * 64))


@pytest.mark.parametrize("shape", [(16, 0, 4, 4), (16, 1, -1, 4), (0, 16, 1, 4, 4)])
def test_empty_or_negative_axes_refused(tmp_path, shape):
    (tmp_path / "z.npy").write_bytes(npy_header(shape))
    with pytest.raises(FlashdecodeError, match="every axis must be at least 1"):
        open_latents(tmp_path / "z.npy")
    with pytest.raises(FlashdecodeError, match="every axis must be at least 1"):
        list(open_latents("-", stdin=io.BytesIO(npy_header(shape))).chunks)
    if min(shape) == 0:
        save_file({"latents": torch.zeros(shape)}, tmp_path / "z.safetensors")
        with pytest.raises(FlashdecodeError, match="every axis must be at least 1"):
            open_latents(tmp_path / "z.safetensors")


def test_bool_refused_from_npy_and_safetensors_alike(tmp_path):
    b = torch.zeros(16, 1, 4, 4, dtype=torch.bool)
    np.save(tmp_path / "b.npy", b.numpy())
    save_file({"latents": b}, tmp_path / "b.safetensors")
    for source, stdin in [(tmp_path / "b.npy", None), (tmp_path / "b.safetensors", None),
                          ("-", io.BytesIO(save({"latents": b}))), ("-", io.BytesIO(npy_bytes(b.numpy())))]:
        with pytest.raises(FlashdecodeError, match="has dtype bool; latents must be a float"):
            list(open_latents(source, stdin=stdin).chunks)
    ints = open_latents("-", stdin=io.BytesIO(save({"latents": torch.ones(16, 1, 4, 4, dtype=torch.int16)})))
    assert all_chunks(ints).dtype == torch.float32  # integers are accepted from both, as float32


def test_safetensors_stream_header_checked_first(monkeypatch):
    monkeypatch.setenv("FLASHDECODE_AVAILABLE_MEMORY", "1G")
    with pytest.raises(FlashdecodeError, match="claims a 1000000000000000-byte header"):
        open_latents("-", stdin=io.BytesIO(struct.pack("<Q", 10**15) + b"{" + b"\0" * 100))
    huge = {"latents": {"dtype": "F32", "shape": [16, 10**6, 10**5], "data_offsets": [0, 64 * 10**11]}}
    with pytest.raises(FlashdecodeError, match=r"needs about .* only 1.0 GiB is available"):
        open_latents("-", stdin=st_stream(huge))
    liar = {"latents": {"dtype": "F32", "shape": [16, 2048, 4096], "data_offsets": [0, 16 * 2048 * 4096 * 4]}}
    with pytest.raises(FlashdecodeError, match="stdin is truncated: its header promises 536870912 bytes of data, got 64"):
        open_latents("-", stdin=st_stream(liar))
    wrong = {"latents": {"dtype": "F32", "shape": [16, 1, 2, 2], "data_offsets": [0, 10]}}
    with pytest.raises(FlashdecodeError, match="declares 10 bytes for shape"):
        open_latents("-", stdin=st_stream(wrong))
    with pytest.raises(FlashdecodeError, match="malformed header entry"):
        open_latents("-", stdin=st_stream({"latents": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}))
    z = torch.randn(1, 16, 2, 4, 4)  # only the chosen tensor is kept; the others are read past
    lat = open_latents("-", stdin=io.BytesIO(save({"a": torch.zeros(300), "latents": z, "b": torch.ones(7)})))
    assert torch.equal(all_chunks(lat), z)
    with pytest.raises(FlashdecodeError, match="stdin is truncated"):
        open_latents("-", stdin=io.BytesIO(save({"latents": z, "zz": torch.zeros(100)})[:-20]))


def test_memory_variable_junk_is_one_line(monkeypatch):
    from flashdecode.memory import available_memory

    monkeypatch.setenv("FLASHDECODE_AVAILABLE_MEMORY", "1.5G")
    assert available_memory() == 1536 << 20
    for junk in ("lots", "-1", "nan", "inf", "1e9", "9" * 400):
        monkeypatch.setenv("FLASHDECODE_AVAILABLE_MEMORY", junk)
        with pytest.raises(FlashdecodeError, match="FLASHDECODE_AVAILABLE_MEMORY=.* is not a size"):
            available_memory()


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_named_pipe_is_read_as_a_stream(tmp_path, suffix):
    """A FIFO (or a device) cannot seek: it is read like stdin, not stat-sized (that was an 'Illegal seek' traceback)."""
    z = torch.randn(1, 16, 2, 4, 4)
    fifo = tmp_path / f"z{suffix}"
    os.mkfifo(fifo)
    data = npy_bytes(z[0, :, :1].numpy(), z[0, :, 1:].numpy()) if suffix == ".npy" else save({"latents": z})
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        lat = open_latents(fifo)
        assert torch.equal(all_chunks(lat), z)
    finally:
        writer.join(timeout=10)
    zeros = tmp_path / f"zeros{suffix}"
    zeros.symlink_to("/dev/zero")
    with pytest.raises(FlashdecodeError, match="is neither NPY arrays"):
        open_latents(zeros)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_container_memory_limit_bounds_the_free_memory(tmp_path, monkeypatch, version):
    """In docker/Kubernetes MemAvailable is the host's: the cgroup limit (minus the working set) is what is free."""
    from flashdecode import memory

    monkeypatch.delenv("FLASHDECODE_AVAILABLE_MEMORY", raising=False)
    sub = tmp_path if version == "v2" else tmp_path / "memory"
    sub.mkdir(exist_ok=True)
    limit, usage, stat = (("memory.max", "memory.current", "inactive_file") if version == "v2" else
                          ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    (sub / limit).write_text(str(2 << 30))
    (sub / usage).write_text(str(1536 << 20))
    (sub / "memory.stat").write_text(f"anon 1\n{stat} {512 << 20}\n")
    assert memory.cgroup_free_memory(str(tmp_path)) == 1 << 30  # 2 GiB - (1.5 GiB - 0.5 GiB of cache)
    monkeypatch.setattr(memory, "CGROUP_ROOT", str(tmp_path))
    assert memory.available_memory() <= 1 << 30
    with pytest.raises(FlashdecodeError, match="only 1.0 GiB is available"):
        memory.check_host_memory(2 << 30, "a 2 GiB claim", "pass less")
    (sub / limit).write_text("max\n" if version == "v2" else str(2 ** 63 - 4096))  # no limit: MemAvailable alone
    assert memory.cgroup_free_memory(str(tmp_path)) is None


# -- the files Wan users have: ComfyUI .latent, torch.save .pt/.pth -----------------------------------------

TINY = ["--model", "tiny", "--weights", "random", "--quiet"]


def comfy_latent(path, z, marker=True, metadata=None):
    """What ComfyUI's SaveLatent writes: the LATENT's samples as 'latent_tensor', and an empty version marker."""
    tensors = {"latent_tensor": z, **({"latent_format_version_0": torch.tensor([])} if marker else {})}
    save_file(tensors, path, metadata=metadata)
    return path


def decoded(tmp_path, source, *flags) -> bytes:
    """The y4m bytes (lossless 8-bit frames) `flashdecode decode` writes for `source`, and its JSON summary."""
    from typer.testing import CliRunner

    from flashdecode.cli import app

    out, summary = tmp_path / f"{Path(source).name}{''.join(flags)}.y4m", tmp_path / "s.json"
    r = CliRunner().invoke(app, ["decode", str(source), "-o", str(out), *TINY, "--json", str(summary), *flags])
    assert r.exit_code == 0, r.stderr
    return out.read_bytes(), json.loads(summary.read_text())


def test_comfyui_latent_decodes_as_raw_by_default(tmp_path):
    """A ComfyUI .latent holds raw VAE latents: decoded without --raw it gives the frames of the same tensor
    decoded from .npy WITH --raw; --no-raw overrides the file."""
    z = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "z.npy", z.numpy())
    latent = comfy_latent(tmp_path / "clip.latent", z, metadata={"prompt": "{}"})
    comfy, s = decoded(tmp_path, latent)
    raw, _ = decoded(tmp_path, tmp_path / "z.npy", "--raw")
    normalized, s_norm = decoded(tmp_path, tmp_path / "z.npy")
    assert comfy == raw and comfy != normalized
    assert s["raw"] is True and s_norm["raw"] is False
    assert decoded(tmp_path, latent, "--no-raw")[0] == normalized


def test_comfyui_latent_layout_marker_and_image_batches(tmp_path):
    # 16 channels and 16 frames is ambiguous for a bare array; a ComfyUI file is always [B,C,T,h,w]
    z = torch.randn(1, 16, 16, 2, 2)
    lat = open_latents(comfy_latent(tmp_path / "sq.latent", z))
    assert (lat.layout, lat.format, lat.key, lat.raw) == ("ncthw", "ComfyUI .latent", "latent_tensor", True)
    assert "ComfyUI" in lat.layout_reason and torch.equal(all_chunks(lat), z)
    np.save(tmp_path / "sq.npy", z.numpy())
    assert open_latents(tmp_path / "sq.npy").layout_reason.startswith("default (ambiguous")
    # Wan2.2's 48 channels, 16 frames: the same, and the space is told by the channels
    lat = open_latents(comfy_latent(tmp_path / "w22.latent", torch.randn(2, 48, 16, 2, 2)))
    assert lat.shape == (2, 48, 16, 2, 2) and lat.latent_space_guess()[0] == "wan2.2"
    # an image batch [B,C,h,w] is B one-frame items
    lat = open_latents(comfy_latent(tmp_path / "img.latent", torch.randn(3, 16, 4, 4)))
    assert lat.shape == (3, 16, 1, 4, 4)
    # no version marker: still raw Wan latents, and NOT scaled by ComfyUI's legacy SD 1.x 1/0.18215
    lat = open_latents(comfy_latent(tmp_path / "old.latent", z, marker=False))
    assert lat.raw is True and "0.18215" in lat.raw_reason and torch.equal(all_chunks(lat), z)
    # the same content under .safetensors is the same thing (ComfyUI's files get renamed)
    assert open_latents(comfy_latent(tmp_path / "renamed.safetensors", z)).format == "ComfyUI .latent"
    # and on stdin
    lat = open_latents("-", stdin=io.BytesIO((tmp_path / "sq.latent").read_bytes()))
    assert lat.raw is True and torch.equal(all_chunks(lat), z)


def test_encode_metadata_says_normalized(tmp_path):
    z = torch.randn(1, 16, 1, 2, 2)
    save_file({"latents": z}, tmp_path / "n.safetensors", metadata={"normalized": "true"})
    save_file({"latents": z}, tmp_path / "r.safetensors", metadata={"normalized": "false"})
    assert open_latents(tmp_path / "n.safetensors").raw is False
    assert open_latents(tmp_path / "r.safetensors").raw is True
    assert open_latents(CROP).raw is False  # flashdecode encode's own files


@pytest.mark.parametrize("key", ["samples", "latents", "latent", "z"])
def test_torch_save_dict_keys(tmp_path, key):
    z = torch.randn(1, 16, 2, 4, 4)
    torch.save({key: z, "batch_index": [0], "fps": 24, "other": torch.zeros(3)}, tmp_path / "d.pth")
    lat = open_latents(tmp_path / "d.pth")
    assert (lat.format, lat.key, lat.metadata["fps"]) == ("torch.save", key, "24")
    assert lat.raw is (True if key == "samples" else None)  # 'samples' is ComfyUI's LATENT dict: raw VAE latents
    assert torch.equal(all_chunks(lat), z)


def test_torch_save_tensor_decodes_like_npy(tmp_path):
    z = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "z.npy", z.numpy())
    torch.save(z, tmp_path / "z.pt")
    torch.save(z.to(torch.bfloat16), tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # read whole
    pt, s = decoded(tmp_path, tmp_path / "z.pt")
    assert pt == decoded(tmp_path, tmp_path / "z.npy")[0] and s["raw"] is False
    assert torch.equal(all_chunks(open_latents(tmp_path / "old.pt")), z.to(torch.bfloat16))


class Pwn:
    """A pickle that creates a file when unpickled: flashdecode must never unpickle it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_object_in_pt_is_refused_and_never_runs(tmp_path, zipped):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if zipped:
        torch.save({"samples": Pwn(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Pwn(marker), protocol=2))
    with pytest.raises(FlashdecodeError, match=r"evil.pt holds a pickled Python object \(posix.system\).*never unpickles"):
        open_latents(path)
    assert not marker.exists()
    from typer.testing import CliRunner

    from flashdecode.cli import app

    for argv in (["decode", str(path), "-o", str(tmp_path / "out.mp4"), *TINY], ["info", str(path)]):
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 2 and isinstance(r.exception, (SystemExit, type(None))), r.exception  # no traceback
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr  # exactly one line
        assert not marker.exists() and not (tmp_path / "out.mp4").exists()


def test_torch_save_bad_contents_are_one_line(tmp_path):
    cases = {
        "list.pt": ([torch.zeros(1, 16, 1, 2, 2)], "holds a list, not a tensor or a dict"),
        "nodict.pt": ({"fps": 24}, "dict without a tensor"),
        "two.pt": ({"a": torch.zeros(16, 1, 2, 2), "b": torch.zeros(16, 1, 2, 2)}, "holds 2 tensors .*--key"),
        "complex.pt": (torch.zeros(16, 1, 2, 2, dtype=torch.complex64), "dtype complex64"),
        "sparse.pt": (torch.zeros(16, 4).to_sparse(), "dtype torch.sparse_coo"),
        "bool.pt": ({"latents": torch.zeros(16, 1, 2, 2, dtype=torch.bool)}, "tensor 'latents' has dtype bool"),
        "empty.pt": (torch.zeros(16, 0, 2, 2), "every axis must be at least 1"),
    }
    for name, (obj, words) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(FlashdecodeError, match=words):
            list(open_latents(tmp_path / name).chunks)
    torch.save(torch.zeros(16, 1, 2, 2), tmp_path / "t.pt")
    with pytest.raises(FlashdecodeError, match="one tensor, not a dict: --key 'x'"):
        open_latents(tmp_path / "t.pt", key="x")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pth").write_bytes(b"x" * 10)
    for name in ("cut.pt", "junk.pth"):
        with pytest.raises(FlashdecodeError, match="truncated or not a torch.save file|corrupt"):
            open_latents(tmp_path / name)


def test_info_describes_the_format_and_values(tmp_path):
    from typer.testing import CliRunner

    from flashdecode.cli import app

    comfy_latent(tmp_path / "c.latent", torch.randn(1, 48, 2, 4, 4))
    r = CliRunner().invoke(app, ["info", str(tmp_path / "c.latent"), "--json"])
    d = json.loads(r.stdout)
    assert (d["format"], d["key"], d["raw"], d["latent_space"]) == ("ComfyUI .latent", "latent_tensor", True, "wan2.2")
    r = CliRunner().invoke(app, ["info", str(tmp_path / "c.latent")])
    assert re.search(r"format +ComfyUI .latent, tensor 'latent_tensor'", r.stdout)
    assert re.search(r"values +raw VAE latents, decoded as --raw \(ComfyUI .latent\)", r.stdout)
    torch.save(torch.randn(1, 16, 1, 4, 4), tmp_path / "t.pt")
    r = CliRunner().invoke(app, ["info", str(tmp_path / "t.pt")])
    assert re.search(r"values +normalized \(the file does not say; pass --raw", r.stdout), r.stdout


def test_text_from_files_is_shown_escaped():
    from flashdecode.errors import listed, printable, shown

    assert shown("clip 01 é 视频.npy") == "clip 01 é 视频.npy"  # printable text is left as it is
    assert shown("a\x1b[2Jb\nerror: x") == "'a\\x1b[2Jb\\nerror: x'"
    assert shown("x\u202etxt.npy") == "'x\\u202etxt.npy'"  # a right-to-left override cannot reorder the line
    assert shown(os.fsdecode(b"bad\xff.npy")) == "'bad\\udcff.npy'"  # an undecodable name prints, escaped
    assert shown("y" * 500, 10) == "yyyyyyyyyy... (490 more characters)"
    assert listed(["a", "b\x07"]) == "a, 'b\\x07'"
    assert listed([f"t{i}" for i in range(20000)]).endswith("t9, ... and 19,990 more")
    assert printable("ok\r\nerror: forged\x1b]0;t\x07") == "ok\\r\\nerror: forged\\x1b]0;t\\x07"
