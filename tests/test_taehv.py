"""Tiny TAEHV decoders (`--model taew2.1/taew2.2`): equal to madebyollin/taehv's reference on the same weights,
streamed frame by frame with flat memory, loaded from the files' own key names, bad files refused in one line.

The reference (../shared/reference/taehv/taehv.py, MIT) is imported by path for the comparisons; those tests
skip where it is absent. Weights are random (no trained TAEHV file is reachable offline).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import flashdecode
from flashdecode import FlashdecodeError
from flashdecode.latent_spaces import get_latent_space
from flashdecode.taehv import MODELS, random_decoder

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "taehv" / "taehv.py"
CROP = Path(__file__).parent / "data" / "wan21_crop_3lat_8x8.safetensors"  # real Wan2.1 latents (normalized)
# (model, variant): taew2_1, taew2_2 and taew2_2_super shapes
KINDS = [("taew2.1", "base"), ("taew2.2", "base"), ("taew2.2", "super")]


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"reference {REFERENCE} not found (CI keeps shared/ beside the clone)")
    spec = importlib.util.spec_from_file_location("reference_taehv", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lively(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights whose output spans [0, 1] instead of PyTorch's default init (which decays to a grey that
    clamps flat): fan-in scaled normal convs, small biases, the last conv centred at 0.5."""
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        fan_in = p[0].numel() if p.ndim == 4 else 10
        p.data.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    net.decoder[-1].bias.data.fill_(0.5)
    return net


def reference_net(reference, model, variant):
    _, channels, patch = MODELS[model]
    net = reference.TAEHV(checkpoint_path=None, patch_size=patch, latent_channels=channels,
                          arch_variant="super" if variant == "super" else None)
    return lively(net).eval()


def save_state(net, path) -> Path:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def own_weights(tmp_path, model="taew2.1", name="taew2_1.safetensors") -> Path:
    """A random file of the model's decoder tensors, without the reference (for the plumbing tests)."""
    _, channels, patch = MODELS[model]
    return save_state(lively(random_decoder(channels, patch)), tmp_path / name)


def latents(model, frames=3, grid=(2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, MODELS[model][1], frames, *grid, generator=g)


def reference_decode(net, z):
    """The reference's whole-clip parallel decode, NCTHW [-1, 1] like flashdecode's output."""
    with torch.no_grad():
        return net.decode_video(z.transpose(1, 2), parallel=True, show_progress_bar=False).transpose(1, 2) * 2 - 1


@pytest.mark.parametrize("model,variant", KINDS)
def test_equals_reference_and_streams_frame_by_frame(reference, tmp_path, model, variant):
    net = reference_net(reference, model, variant)
    decoder = flashdecode.load_decoder(model, weights=save_state(net, tmp_path / "w.safetensors"), device="cpu")
    assert decoder.metadata["variant"] == variant and decoder.precision == "float32"
    z = latents(model, frames=3, grid=(2, 3))  # non-square grid
    want, got = reference_decode(net, z), decoder.decode(z)
    s = 16 if model == "taew2.2" else 8
    assert got.shape == want.shape == (1, 3, 1 + 4 * 2, 2 * s, 3 * s)  # the Wan VAE's 1 + 4(T-1) frames
    assert (got - want).abs().max().item() <= 1e-4
    assert want.std() > 0.1 and (want.abs() < 0.99).float().mean() > 0.3  # not a flat, clamped output
    # A later latent frame's pixels depend on the earlier ones (the one-frame memories carry them forward).
    changed = z.clone()
    changed[:, :, 0] += 1
    assert (decoder.decode(changed)[:, :, -4:] - got[:, :, -4:]).abs().max() > 1e-3
    # Streamed one latent frame at a time ([B,C,h,w] frames), the same pixels in chunks of 1, 4, 4.
    chunks = list(decoder.stream(z[:, :, t] for t in range(3)))
    assert [c.shape[2] for c in chunks] == [1, 4, 4] and torch.equal(torch.cat(chunks, 2), got)
    # A new video remembers nothing of the last one.
    assert (decoder.decode(z[:, :, 1:]) - reference_decode(net, z[:, :, 1:])).abs().max().item() <= 1e-4


def test_file_with_wider_time_growth_loads_like_the_reference(reference, tmp_path):
    # A file whose first TGrow was trained to double time (taehv's decoder_time_upscale=(True, True, True)) keeps,
    # decoded without that growth, the last frame's channels: what the reference's patch_tgrow_layers does.
    wide = lively(reference.TAEHV(checkpoint_path=None, decoder_time_upscale=(True, True, True)))
    path = tmp_path / "taew2_1.pth"  # the reference picks its shapes from the file name
    torch.save(wide.state_dict(), path)
    assert wide.state_dict()["decoder.7.conv.weight"].shape[0] == 512
    net = reference.TAEHV(checkpoint_path=str(path)).eval()
    z = latents("taew2.1", frames=2, grid=(2, 2))
    got = flashdecode.load_decoder("taew2.1", weights=path, device="cpu").decode(z)
    assert (got - reference_decode(net, z)).abs().max().item() <= 1e-4


def test_raw_latents_are_normalized_first(tmp_path):
    # TAEHV decodes diffusion-space latents as they are; raw VAE latents (raw=True) are normalized first.
    decoder = flashdecode.load_decoder("taew2.1", weights=own_weights(tmp_path), device="cpu")
    z = latents("taew2.1", frames=2, grid=(2, 2))
    raw = get_latent_space("wan2.1").denormalize(z)
    assert (decoder.decode(raw, raw=True) - decoder.decode(z)).abs().max().item() <= 1e-4
    assert (decoder.decode(raw) - decoder.decode(z)).abs().max().item() > 1e-2


def test_pth_state_dict_loads_like_safetensors(tmp_path):
    weights = own_weights(tmp_path)
    torch.save(load_file(str(weights)), tmp_path / "taew2_1.pth")
    z = latents("taew2.1", frames=2, grid=(2, 2))
    a = flashdecode.load_decoder("taew2.1", weights=weights, device="cpu").decode(z)
    b = flashdecode.load_decoder("taew2.1", weights=tmp_path / "taew2_1.pth", device="cpu").decode(z)
    assert torch.equal(a, b)


def cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flashdecode", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=1200)


def test_cli_decodes_real_wan21_latents(tmp_path):
    # A 2-frame 4x4 crop of real Wan2.1 latents (a bigger grid costs CPU time, not coverage).
    z = load_file(str(CROP))["latents"][:, :, :2, :4, :4].contiguous()
    crop = tmp_path / "crop.safetensors"
    save_file({"latents": z}, str(crop), metadata={"layout": "NCTHW", "latent_space": "wan2.1", "normalized": "true"})
    weights = own_weights(tmp_path)
    r = cli("decode", crop, "--model", "taew2.1", "--weights", weights, "-o", tmp_path / "out.mp4", "-q")
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "out.mp4")) as f:
        assert [fr.to_ndarray(format="rgb24").shape for fr in f.decode(video=0)] == [(32, 32, 3)] * 5
    # Losslessly (PNG), the written frames are the API's decode of the same file, rounded to uint8.
    r = cli("decode", crop, "--model", "taew2.1", "--weights", weights, "-o", tmp_path / "png", "-q")
    assert r.returncode == 0, r.stderr
    written = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "png").iterdir())]).astype(int)
    want = flashdecode.load_decoder("taew2.1", weights=weights, device="cpu").decode(z.float())
    want = ((want[0].permute(1, 2, 3, 0) + 1) * 127.5).round().numpy()
    assert written.shape == want.shape and np.abs(written - want).max() <= 1


@pytest.mark.slow
def test_cli_decodes_the_whole_sample_clip(tmp_path):
    # samples/: 16 real Wan2.1 latent frames, 40x64 -> 61 frames of 512x320 (minutes on a 2-core CPU).
    out = tmp_path / "out.mp4"
    r = cli("decode", REPO / "samples" / "wan21_t2v_320x512_16lat.safetensors", "--model", "taew2.1", "--weights",
            own_weights(tmp_path), "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as f:
        assert [fr.to_ndarray(format="rgb24").shape for fr in f.decode(video=0)] == [(320, 512, 3)] * 61


def test_pickled_pth_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "taew2_1.pth"
    torch.save({"decoder.1.weight": torch.zeros(1), "why": Path("not a tensor")}, bad)  # needs an unpickled class
    r = cli("decode", CROP, "--model", "taew2.1", "--weights", bad, "-o", tmp_path / "x.mp4")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "never unpickled" in lines[0], r.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_wrong_file_for_the_model_is_one_clear_line(tmp_path):
    weights = own_weights(tmp_path, "taew2.2", "taew2_2.safetensors")
    r = cli("decode", CROP, "--model", "taew2.1", "--weights", weights, "-o", tmp_path / "x.mp4")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit --model taew2.1" in lines[0] and "--model taew2.2" in lines[0], r.stderr
    save_file({"encoder.0.weight": torch.zeros(1)}, str(tmp_path / "encoder_only.safetensors"))
    with pytest.raises(FlashdecodeError, match="holds no TAEHV decoder tensors"):
        flashdecode.load_decoder("taew2.1", weights=tmp_path / "encoder_only.safetensors")
    with pytest.raises(FlashdecodeError, match="does not exist"):
        flashdecode.load_decoder("taew2.1", weights=tmp_path / "missing.safetensors")
    with pytest.raises(FlashdecodeError, match="needs --weights"):
        flashdecode.load_decoder("taew2.1")


def test_random_weights_and_the_interface():
    d = flashdecode.load_decoder("taew2.2", weights="random", device="cpu")
    assert d.random_weights and d.name == "taew2.2" and d.latent_space.name == "wan2.2"
    assert d.pixel_size(3, 4) == (48, 64)
    assert 9e6 < d.num_parameters() < 11e6 and d.weight_bytes() == 4 * d.num_parameters()
    assert d.flops_per_latent_frame(4, 4) * 4 == pytest.approx(d.flops_per_latent_frame(8, 8), rel=1e-6)
    assert d.estimate_memory(2, 8, 8)["total"] > d.estimate_memory(1, 8, 8)["total"] > 0
    e = flashdecode.load_decoder("taew2.2", weights="random", device="cpu")
    z = latents("taew2.2", frames=2, grid=(1, 1))
    assert torch.equal(d.decode(z), e.decode(z))  # seeded: the same "random" weights every time
    with pytest.raises(FlashdecodeError, match="channels"):
        d.decode(latents("taew2.1", frames=1, grid=(1, 1)))


def test_models_lists_the_tiny_decoders():
    from typer.testing import CliRunner

    from flashdecode.cli import app

    r = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "taew2.1, taew2.2" in r.output and "madebyollin/taehv" in r.output


PEAK_RSS = """
import resource, sys, torch, flashdecode
torch.manual_seed(0)
torch.set_num_threads(1)
d = flashdecode.load_decoder("taew2.2", weights="random", device="cpu")
frames = (torch.randn(1, 48, 8, 8) for _ in range(int(sys.argv[1])))
for px in d.stream(frames):
    del px  # consume and drop, as the writer does
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_length(peak_rss_kb):
    # 128x128 px: a decode that kept the clip's activations (the reference's parallel mode) adds ~40 MB a frame.
    short, long = peak_rss_kb(PEAK_RSS, 2), peak_rss_kb(PEAK_RSS, 7)
    assert long / short <= 1.05, (short, long)


@pytest.mark.cuda
def test_streams_on_cuda_without_host_syncs():
    from flashdecode.convert import to_i420

    decoder = flashdecode.load_decoder("taew2.2", weights="random", device="cuda")  # bf16
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 48, 4, 6, generator=g) for _ in range(6)]
    it = decoder.stream(iter(frames), native=True)
    out = [to_i420(next(it)) for _ in range(2)]  # set-up: the first frame's memories, the first pinned blocks
    torch.cuda.set_sync_debug_mode("error")
    try:
        out += [to_i420(next(it)) for _ in range(len(frames) - 2)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert next(it, None) is None
    cpu = flashdecode.load_decoder("taew2.2", weights="random", device="cpu").decode(torch.stack(frames, 2))
    assert (to_i420(cpu.cuda()).float() - torch.cat(out, 1).float()).abs().mean() < 2  # bf16 against float32
