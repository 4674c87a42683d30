import io
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from flashdecode.cli import app
from flashdecode.training.demo_codec import PCATeacher
from flashdecode.training.teachers import tiny_wan_vae
from flashdecode.training.video_data import read_clip

CLIP = Path(__file__).parent / "data" / "carphone_176x144_30fps_33f.mp4"  # 33 frames, 144x176, 30 fps
runner = CliRunner()


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random orthonormal demo teacher, so the test does not depend on the bundled weights."""
    g = torch.Generator().manual_seed(0)
    basis = lambda d: torch.linalg.qr(torch.randn(d, 48, generator=g))[0].T  # noqa: E731
    teacher = PCATeacher(torch.zeros(3072), basis(3072), torch.ones(48))
    return teacher.save(tmp_path_factory.mktemp("teacher") / "pca.safetensors")


def encode(*args):
    return runner.invoke(app, ["encode", str(CLIP), *map(str, args)])


def test_encode_to_safetensors(tmp_path, teacher_file):
    out = tmp_path / "z.safetensors"
    result = encode("-o", out, "--teacher-weights", teacher_file, "--size", "64x64", "--max-frames", 12)
    assert result.exit_code == 0, result.output
    assert "encoded 9 frames" in result.stderr
    with safe_open(str(out), "pt") as f:
        z, meta = f.get_tensor("latents"), f.metadata()
    assert z.shape == (1, 48, 3, 4, 4) and z.dtype == torch.float32
    assert meta["layout"] == "NCTHW" and meta["latent_space"] == "demo" and meta["normalized"] == "true"
    assert float(meta["fps"]) == 30 and meta["source"] == str(CLIP) and meta["frames"] == "9"
    expected = PCATeacher.load(teacher_file).encode(read_clip(CLIP, 0, 9, (64, 64))[None])
    assert torch.allclose(z, expected, atol=1e-5)


def test_defaults_take_every_4k1_frame_at_the_video_size(tmp_path, teacher_file):
    out = tmp_path / "z.npy"
    result = encode("-o", out, "--teacher-weights", teacher_file, "--start", 2, "--dtype", "float16")
    assert result.exit_code == 0, result.output
    z = np.load(out)
    assert z.shape == (1, 48, 8, 9, 11) and z.dtype == np.float16  # 31 frames left -> 29 = 1 + 4*7


def test_encode_to_a_stdout_npy_stream(tmp_path, teacher_file):
    result = encode("-o", "-", "--teacher-weights", teacher_file, "--size", "32x48", "--frames", 13)
    assert result.exit_code == 0, result.stderr
    stream = io.BytesIO(result.stdout_bytes)
    frames = []
    while stream.tell() < len(result.stdout_bytes):
        frames.append(np.lib.format.read_array(stream))
    assert [f.shape for f in frames] == [(48, 2, 3)] * 4
    whole = tmp_path / "z.safetensors"
    encode("-o", whole, "--teacher-weights", teacher_file, "--size", "32x48", "--frames", 13)
    with safe_open(str(whole), "pt") as f:
        assert np.array_equal(np.stack(frames, 1)[None], f.get_tensor("latents").numpy())
    from flashdecode.latents_io import iter_npy_stream  # what `flashdecode decode -` reads

    assert len(list(iter_npy_stream(io.BytesIO(result.stdout_bytes)))) == 4


def test_encode_with_a_local_wan_vae(tmp_path):
    tiny_wan_vae("wan2.1", save_to=tmp_path / "vae")
    out = tmp_path / "z.safetensors"
    result = encode("-o", out, "--teacher", "wan2.1", "--vae", tmp_path / "vae", "--size", "32x32", "--frames", 5)
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("latents").shape == (1, 16, 2, 4, 4) and f.metadata()["latent_space"] == "wan2.1"


@pytest.mark.parametrize("args,message", [
    (["--size", "100x100"], "not a multiple of 16"),
    (["--size", "big"], "not HxW"),
    (["--frames", "6"], "not 4k+1"),
    (["--frames", "37"], "only 33 frames"),
    (["--start", "40"], "no frames from --start 40"),
    (["--teacher", "wan2.2"], "needs --vae"),
    (["--teacher", "wan2.2", "--vae", "/nonexistent/vae"], "does not exist"),
    (["--teacher-weights", "/nonexistent/pca.safetensors"], "not found"),
    (["--size", "0x0"], "at least 16"),
    (["--size", "-16x32"], "at least 16"),
    (["--size", "160000x160000", "--frames", "9"], "pass a smaller --size"),  # refused before allocating ~7 TB
    (["--size", "99999999999999999999984x16"], "pass a smaller --size"),
    (["--frames", "0"], "not 4k+1"),
    (["--frames", "-3"], "not 4k+1"),
    (["--max-frames", "0"], "--max-frames 0 must be at least 1"),
    (["--start", "-1"], "negative"),
    (["--start", "99999999999999999999999"], "no frames from --start"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "cuda"),
])
def test_errors_exit_2_with_one_line(tmp_path, args, message):
    result = encode("-o", tmp_path / "z.safetensors", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_input_and_output_errors(tmp_path):
    for video, message in [(tmp_path / "missing.mp4", "does not exist"), (Path(__file__), "not a video")]:
        result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "z.safetensors")])
        assert result.exit_code == 2 and message in result.stderr
    result = encode("-o", tmp_path / "z.pt")
    assert result.exit_code == 2 and "unknown output extension" in result.stderr


def test_latents_that_are_not_finite_are_never_written():
    """The last guard before a file: a teacher that makes NaN/Inf (or a value past float16's range) is one line."""
    from flashdecode.cli.encode import finite_frames
    from flashdecode.errors import FlashdecodeError

    good, bad = torch.zeros(1, 48, 2, 2), torch.zeros(1, 48, 2, 2)
    bad[0, 3, 1, 1] = float("nan")
    with pytest.raises(FlashdecodeError, match="NaN or Inf latents in latent frame 1; its weights are corrupt"):
        list(finite_frames(iter([good, bad]), torch.float32, "demo-pca"))
    with pytest.raises(FlashdecodeError, match="float16's range"):
        list(finite_frames(iter([good + 1e5]), torch.float16, "wan2.1"))
    assert [z.dtype for z in finite_frames(iter([good, good]), torch.float16, "demo-pca")] == [torch.float16] * 2
