from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flashdecode.training.demo_codec import PCATeacher, fit_pca_teacher, patchify, unpatchify
from flashdecode.errors import FlashdecodeError
from flashdecode.latent_spaces import get_latent_space
from flashdecode.training.metrics import psnr
from flashdecode.training.teachers import WanTeacher, load_teacher, tiny_wan_vae
from flashdecode.wan_vae import TINY_CONFIGS
from flashdecode.training.video_data import read_clip

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "tests" / "data" / "carphone_176x144_30fps_33f.mp4"
BUNDLED = REPO / "weights" / "demo-pca-teacher.safetensors"


def pixels(t=5, h=32, w=32, seed=0):
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- Wan

@pytest.mark.parametrize("space,channels,s", [("wan2.2", 48, 16), ("wan2.1", 16, 8)])
def test_wan_teacher_from_a_diffusers_folder(tmp_path, space, channels, s):
    vae = tiny_wan_vae(space, save_to=tmp_path / "vae")
    teacher = WanTeacher.load(tmp_path / "vae")  # real from_pretrained(local_files_only=True) on a real folder
    assert teacher.name == space and teacher.latent_space.name == space and teacher.spatial == s
    x = pixels()
    z = teacher.encode(x)
    assert z.shape == (1, channels, 2, 32 // s, 32 // s)
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.mode()
    assert torch.allclose(z, get_latent_space(space).normalize(raw), atol=1e-5)  # normalized with our constants
    y = teacher.decode(z)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert [c.shape for c in teacher.encode_stream([x[:, :, :1], x[:, :, 1:]])] == [z[:, :, 0].shape] * 2


def test_wan_teacher_from_a_single_file(tmp_path):
    vae = tiny_wan_vae("wan2.2", save_to=tmp_path / "vae")
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    from_file = WanTeacher.load(tmp_path / "vae.safetensors", config=TINY_CONFIGS["wan2.2"])
    from_folder = WanTeacher.load(tmp_path / "vae")
    assert torch.allclose(from_file.encode(pixels()), from_folder.encode(pixels()))
    assert from_file.fingerprint() == from_folder.fingerprint()
    partial = {k: v for k, v in vae.state_dict().items() if not k.startswith("decoder.conv_out")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(FlashdecodeError, match="missing"):  # never silently random weights
        WanTeacher.load(tmp_path / "partial.safetensors", config=TINY_CONFIGS["wan2.2"])


def test_wan_teacher_errors(tmp_path):
    with pytest.raises(FlashdecodeError, match="does not exist"):
        WanTeacher.load(tmp_path / "missing")
    with pytest.raises(FlashdecodeError, match="needs --vae"):
        load_teacher("wan2.2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlashdecodeError, match="config.json"):
        WanTeacher.load(tmp_path / "empty")
    tiny_wan_vae("wan2.1", save_to=tmp_path / "vae21")
    with pytest.raises(FlashdecodeError, match="pass --teacher wan2.1"):
        load_teacher("wan2.2", tmp_path / "vae21")


# ---------------------------------------------------------------------------------------------- PCA

def test_patchify_inverts():
    x = pixels(t=4)
    v = patchify(x, 16)
    assert v.shape == (1, 2, 2, 3 * 4 * 16 * 16)
    assert torch.equal(unpatchify(v, 4, 16), x)


def test_pca_is_exact_on_data_it_spans():
    # Frames whose p x p patches lie in a 48-dimensional subspace (each frame of a group a scaled copy of one
    # such image): 48 components reconstruct them exactly. Patch 8 keeps the covariances small (fast test).
    p, g = 8, torch.Generator().manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(3 * p * p, 48, generator=g))[0].T
    image = lambda: unpatchify(torch.randn(1, 4, 4, 48, generator=g) @ dirs * 0.1, 1, p)  # noqa: E731  [1, 3, 1, 32, 32]

    def group():  # 4 frames: scaled copies of one such image
        im = image()
        return torch.cat([a * im for a in (1.0, 0.5, -0.5, -1.0)], dim=2)

    clips = [torch.cat([image(), group(), group()], dim=2)[0] for _ in range(24)]  # 9 frames of 32x32
    teacher = fit_pca_teacher(clips, components=48, patch=p, patches_per_clip=10**6)
    for c in clips[:2]:
        z = teacher.encode(c[None])
        assert z.shape == (1, 48, 3, 4, 4)
        decoded = teacher.decode(z)
        assert torch.allclose(decoded[:, :, 1:], c[None, :, 1:], atol=1e-4)  # groups: exact
        # The first frame (in the last sub-frame's span here) through the ridge encoder: close, not exact.
        assert (decoded[:, :, 0] - c[None, :, 0]).abs().max() < 0.05 * c[:, 0].abs().max()
    z = torch.cat([teacher.encode(c[None]) for c in clips])
    assert z.mean().abs() < 0.05 and z.std().item() == pytest.approx(1, abs=0.1)  # per-channel normalized


def test_pca_round_trip_on_real_video(tmp_path):
    clip = read_clip(CLIP, 0, 33)
    teacher = fit_pca_teacher([clip[:, :17], clip[:, 8:25]], patch=8, patches_per_clip=4000, metadata={"note": "test"})
    held_out = clip[None, :, 24:33]
    assert psnr(teacher.decode(teacher.encode(held_out)), held_out)[0] > 26
    path = teacher.save(tmp_path / "pca.safetensors")
    loaded = PCATeacher.load(path)
    assert loaded.patch == 8 and loaded.metadata["note"] == "test" and loaded.metadata["latent_space"] == "demo"
    assert torch.equal(loaded.encode(held_out), teacher.encode(held_out))
    assert loaded.fingerprint() == teacher.fingerprint()
    chunks = [held_out[:, :, :1], held_out[:, :, 1:5], held_out[:, :, 5:9]]
    assert torch.allclose(torch.stack(list(loaded.encode_stream(chunks)), 2), loaded.encode(held_out))


@pytest.mark.skipif(not BUNDLED.is_file(), reason="weights/demo-pca-teacher.safetensors not made yet")
def test_bundled_demo_teacher():
    teacher = load_teacher("demo", BUNDLED)
    assert teacher.latent_space.name == "demo" and teacher.channels == 48 and BUNDLED.stat().st_size < 1_000_000
    clip = read_clip(CLIP, 0, 17)[None]
    z = teacher.encode(clip)
    assert z.shape == (1, 48, 5, 9, 11)
    assert psnr(teacher.decode(z), clip)[0] > 25  # 26.3 dB: native-resolution QCIF detail is the hard case
    assert teacher.metadata["eval"][0]["psnr"] > 29


def test_pca_teacher_file_errors(tmp_path):
    with pytest.raises(FlashdecodeError, match="not found"):
        PCATeacher.load(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "flashdecode"})
    with pytest.raises(FlashdecodeError, match="not a demo PCA teacher"):
        PCATeacher.load(tmp_path / "other.safetensors")
