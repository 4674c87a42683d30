"""The stock Wan VAE decoder, streamed (`--model wan2.1-vae/wan2.2-vae`): exactly diffusers' `vae.decode`, from the
files Wan users have, through the same pipeline, with memory flat in the clip's length.

Tiny random AutoencoderKLWan configs saved with save_pretrained: the real loading paths, milliseconds to build.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flashdecode import load_decoder
from flashdecode.errors import FlashdecodeError
from flashdecode.latent_spaces import pixel_frames
from flashdecode.wan_vae import TINY_CONFIGS, tiny_wan_vae

SPACES = {"wan2.1": (16, 8), "wan2.2": (48, 16)}  # channels, pixels per latent cell


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    """{space: (the diffusers VAE, its save_pretrained folder)}."""
    root = tmp_path_factory.mktemp("vaes")
    return {space: (tiny_wan_vae(space, seed=1, save_to=root / space), root / space) for space in SPACES}


def diffusers_decode(vae, z, raw=False):
    """What diffusers' WanPipeline does with its latents: denormalize with the VAE's constants, vae.decode, clamp."""
    if not raw:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        z = z / std + mean
    with torch.no_grad():
        return vae.decode(z).sample.clamp(-1, 1)


def latents(space, b=1, t=4, h=4, w=6, seed=0):
    return torch.randn(b, SPACES[space][0], t, h, w, generator=torch.Generator().manual_seed(seed))


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "flashdecode", *map(str, args)], capture_output=True, timeout=300, **kw)


# -- the function ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", SPACES)
def test_streamed_frames_equal_diffusers_decode(vaes, space):
    vae, folder = vaes[space]
    dec = load_decoder(f"{space}-vae", weights=folder, device="cpu", dtype="fp32")
    assert dec.name == f"{space}-vae" and dec.latent_space.name == space and not dec.random_weights
    z = latents(space, b=2)
    ref = diffusers_decode(vae, z)
    s = SPACES[space][1]
    assert ref.shape == (2, 3, pixel_frames(4), 4 * s, 6 * s)

    chunks = list(dec.stream(z.unbind(2)))  # one latent frame at a time, as a file or a pipe delivers them
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    assert all(c.dtype == torch.float32 for c in chunks)
    torch.testing.assert_close(torch.cat(chunks, 2), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(dec.decode(z), ref, atol=1e-4, rtol=0)  # a whole clip, and a second video
    raw = z * 2 + 0.5  # un-normalized VAE latents go in as they are
    torch.testing.assert_close(dec.decode(raw, raw=True), diffusers_decode(vae, raw, raw=True), atol=1e-4, rtol=0)


def test_the_interface_sizes_itself(vaes):
    vae, folder = vaes["wan2.2"]
    dec = load_decoder("wan2.2-vae", weights=folder)
    kept = sum(p.numel() for m in (vae.decoder, vae.post_quant_conv) for p in m.parameters())
    assert dec.num_parameters() == kept < sum(p.numel() for p in vae.parameters())  # the encoder is dropped
    assert dec.weight_bytes() == 4 * kept and dec.precision == "float32"
    assert dec.pixel_size(4, 6) == (64, 96)
    small, big = dec.estimate_memory(1, 4, 6), dec.estimate_memory(2, 8, 12)
    assert set(small) >= {"weights", "feature_cache", "activations", "pixels", "total"}
    assert big["total"] > 4 * (small["total"] - small["weights"] * 1.25)  # 2x the batch, 4x the pixels
    f = dec.flops_per_latent_frame(4, 6)
    assert f > 0 and dec.flops_per_latent_frame(8, 12) == pytest.approx(4 * f, rel=0.05)
    assert dec.flops(64, 96, 5) == pytest.approx(dec.flops(64, 96, 4) + f)


def test_random_weights_build_only_the_decoder_with_diffusers_init():
    from flashdecode.wan_vae import build_vae

    vae = build_vae("wan2.2", "tiny", device="cpu")
    assert vae.encoder is None
    params = dict(vae.named_parameters())
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    gains = [p for n, p in params.items() if n.endswith("gamma")]
    assert gains and all(bool((g == 1).all()) for g in gains)
    conv = params["decoder.conv_in.weight"]  # PyTorch's default: uniform within 1/sqrt(fan_in)
    bound = (conv[0].numel()) ** -0.5
    assert 0.5 * bound < conv.abs().max() <= bound and conv.std() > 0.2 * bound
    assert torch.equal(conv, build_vae("wan2.2", "tiny", device="cpu").decoder.conv_in.weight)  # seeded


def test_bad_latents_and_shape_changes_are_one_sentence(vaes):
    dec = load_decoder("wan2.1-vae", weights=vaes["wan2.1"][1])
    with pytest.raises(FlashdecodeError, match="48 channels but latent space 'wan2.1' has 16"):
        dec.decode(latents("wan2.2"))
    with pytest.raises(FlashdecodeError, match="NaN"):
        dec.decode(latents("wan2.1").fill_(float("nan")))
    with pytest.raises(FlashdecodeError, match="all frames of a video must have one shape"):
        list(dec.stream([latents("wan2.1", h=4), latents("wan2.1", h=6)]))
    dec.reset()
    assert dec.cache is None


# -- the files users have -------------------------------------------------------------------------------

def test_pipeline_folders_and_single_checkpoint_files(vaes, tmp_path, monkeypatch):
    vae, folder = vaes["wan2.1"]
    z = latents("wan2.1", t=2)
    ref = diffusers_decode(vae, z)
    vae.save_pretrained(str(tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "vae"))  # a pipeline folder: vae/ inside
    (tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "model_index.json").write_text("{}")
    torch.save(vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")  # the original checkpoint is a .pth state dict
    save_file(vae.state_dict(), str(tmp_path / "wan_2.1_vae.safetensors"))  # ComfyUI's file
    # A single file carries no config: the real Wan2.1 one is chosen by its z_dim; here the tiny one stands in.
    monkeypatch.setitem(sys.modules["flashdecode.wan_vae"].CONFIGS, "wan2.1", TINY_CONFIGS["wan2.1"])
    for weights in ("Wan2.1-T2V-1.3B-Diffusers", "Wan2.1_VAE.pth", "wan_2.1_vae.safetensors"):
        dec = load_decoder("wan2.1-vae", weights=tmp_path / weights)
        torch.testing.assert_close(dec.decode(z), ref, atol=1e-4, rtol=0, msg=weights)


def test_a_pickled_object_is_refused_not_run(tmp_path):
    torch.save({"decoder": subprocess.Popen}, tmp_path / "evil.pth")  # needs more than weights_only allows
    with pytest.raises(FlashdecodeError, match="cannot read .*evil.pth as a checkpoint"):
        load_decoder("wan2.1-vae", weights=tmp_path / "evil.pth")


def test_the_cli_writes_the_vaes_frames(vaes, tmp_path):
    """`flashdecode decode --model wan2.x-vae --weights DIR`: PNG frames are diffusers' frames to the uint8 step,
    the MP4 holds them within the codec's loss, --json says what ran."""
    for space, (vae, folder) in vaes.items():
        z = latents(space, t=3, seed=2)
        src = tmp_path / f"{space}.safetensors"
        save_file({"latents": z}, str(src))
        expected = ((diffusers_decode(vae, z)[0] + 1) * 127.5).round().permute(1, 2, 3, 0).numpy()  # [T,H,W,3]
        pngs = tmp_path / f"{space.replace('.', '')}-png"
        r = cli("decode", src, "--model", f"{space}-vae", "--weights", folder, "-o", pngs, "-q",
                "--json", tmp_path / f"{space}.json")
        assert r.returncode == 0, r.stderr.decode()
        frames = np.stack([np.asarray(Image.open(p)) for p in sorted(pngs.glob("*.png"))]).astype(np.float32)
        assert frames.shape == expected.shape and np.abs(frames - expected).max() <= 1
        summary = json.loads((tmp_path / f"{space}.json").read_text())
        assert summary["status"] == "ok" and summary["model"] == f"{space}-vae" and summary["frames"] == 9
        assert summary["parameters"] == sum(p.numel() for m in (vae.decoder, vae.post_quant_conv) for p in m.parameters())

        mp4 = tmp_path / f"{space}.mp4"
        r = cli("decode", src, "--model", f"{space}-vae", "--weights", folder, "-o", mp4, "-q", "--crf", "10")
        assert r.returncode == 0, r.stderr.decode()
        with av.open(str(mp4)) as c:  # the luma plane: 4:2:0 halves the chroma of noise-like random-weight frames
            luma = np.stack([f.to_ndarray(format="yuv420p")[:f.height] for f in c.decode(video=0)]).astype(np.float32)
        expected_luma = 16 + 219 / 255 * (expected @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32))  # BT.709 tv
        assert luma.shape == expected_luma.shape
        mse = np.mean((luma - expected_luma) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 40  # x264 at crf 10


def test_any_latent_grid(vaes, tmp_path):
    """The conv decoder takes grids FlashDecoder's 2x2 Wan2.1 tokens cannot (e.g. 360 px high: 45 latent rows)."""
    from flashdecode import decode_file

    vae, folder = vaes["wan2.1"]
    z = latents("wan2.1", t=2, h=5, w=7)
    save_file({"latents": z}, str(tmp_path / "odd.safetensors"))
    summary = decode_file(tmp_path / "odd.safetensors", tmp_path / "odd", model="wan2.1-vae", weights=folder)
    assert summary["status"] == "ok" and (summary["width"], summary["height"], summary["frames"]) == (56, 40, 5)
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "odd").glob("*.png"))]).astype(np.float32)
    expected = ((diffusers_decode(vae, z)[0] + 1) * 127.5).round().permute(1, 2, 3, 0).numpy()
    assert np.abs(frames - expected).max() <= 1


def test_many_files_into_a_folder(vaes, tmp_path):
    """The batch path (several files, one decoder) takes the family too."""
    for i in range(2):
        save_file({"latents": latents("wan2.2", t=2, seed=i)}, str(tmp_path / f"clip{i}.safetensors"))
    r = cli("decode", tmp_path / "clip0.safetensors", tmp_path / "clip1.safetensors", "--model", "wan2.2-vae",
            "--weights", vaes["wan2.2"][1], "-o", f"{tmp_path / 'out'}/", "-q")
    assert r.returncode == 0, r.stderr.decode()
    for i in range(2):
        with av.open(str(tmp_path / "out" / f"clip{i}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5


def test_bad_weights_and_wrong_latent_space_are_one_line(vaes, tmp_path):
    from flashdecode import decode_file

    src21 = tmp_path / "lat21.safetensors"
    save_file({"latents": latents("wan2.1", t=2)}, str(src21))
    src22 = tmp_path / "lat22.safetensors"
    save_file({"latents": latents("wan2.2", t=2)}, str(src22))
    (tmp_path / "empty").mkdir()
    flash = os.path.join(os.path.dirname(__file__), "..", "weights", "demo-xs.safetensors")  # a FlashDecoder file
    out = tmp_path / "out.mp4"
    cases = [  # (decode_file arguments, the message), through the API: the CLI prints the same as one line
        (dict(input=src21, model="wan2.1-vae"), "needs --weights PATH"),
        (dict(input=src21, model="wan2.1-vae", weights=tmp_path / "empty"), "no config.json"),
        (dict(input=src21, model="wan2.1-vae", weights=flash), "not a Wan VAE"),
        (dict(input=src21, model="wan2.1-vae", weights=vaes["wan2.2"][1]), "is a wan2.2 VAE .* pass --model wan2.2-vae"),
        (dict(input=src21, model="wan2.1-vae", weights=vaes["wan2.1"][1], latent_space="wan2.2"),
         "16 channels .* latent space 'wan2.2'"),
        (dict(input=src21, model="wan2.1-vae", weights="random", dtype="fp8"), "fp8 is for FlashDecoder"),
    ]
    for kw, message in cases:
        with pytest.raises(FlashdecodeError, match=message):
            decode_file(output=out, **kw)
        assert not out.exists()
    for args, message in [((src21, "--weights", tmp_path / "missing"), "does not exist"),
                          ((src22, "--weights", vaes["wan2.1"][1]), "has 48 channels")]:
        r = cli("decode", *args, "--model", "wan2.1-vae", "-o", out)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
        assert re.search(message, lines[0]) and not out.exists(), (message, lines[0])


# -- memory ---------------------------------------------------------------------------------------------

def test_streaming_keeps_a_fixed_cache_and_no_frames(vaes):
    """What keeps memory flat: the causal cache has one size from the second frame on, and a chunk the caller
    drops is freed (nothing in the decoder holds it)."""
    import gc
    import weakref

    dec = load_decoder("wan2.2-vae", weights=vaes["wan2.2"][1])
    sizes, chunks = [], []
    for chunk in dec.stream(latents("wan2.2", t=12).unbind(2)):
        sizes.append(sum(c.nbytes for c in dec.cache if isinstance(c, torch.Tensor)))
        chunks.append(weakref.ref(chunk))
        del chunk
    gc.collect()
    assert len(sizes) == 12 and len(set(sizes[1:])) == 1 and sizes[1] > 0
    assert all(ref() is None for ref in chunks)


# A narrow decoder (4 channels) at 256x256 pixels: per frame a fraction of a second on one core, while one clip of
# 157 frames is ~120 MB of float32, so a decoder that held its frames would be 1.2x over the flat line. About a
# minute on two idle cores (four processes, 100 latent frames), hence slow; the test above is the quick check.
NARROW = dict(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0)
PEAK = textwrap.dedent("""
    import resource, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    folder, src, how, result = sys.argv[1:]
    if how == "stream":  # the whole pipeline, to raw frames on stdout (/dev/null)
        from flashdecode import decode_file
        decode_file(src, "-", model="wan2.1-vae", weights=folder, stdout_format="raw")
    else:  # diffusers' own call on the same latents
        from diffusers import AutoencoderKLWan
        vae = AutoencoderKLWan.from_pretrained(folder).eval()
        vae.encoder = None
        with torch.no_grad():
            out = vae.decode(load_file(src)["latents"]).sample
    open(result, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
""")


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_clip_length_unlike_vae_decode(tmp_path, grid=32):
    torch.manual_seed(0)
    from diffusers import AutoencoderKLWan

    AutoencoderKLWan(**NARROW).save_pretrained(str(tmp_path / "vae"))
    for n in (10, 40):
        save_file({"latents": torch.randn(1, 16, n, grid, grid)}, str(tmp_path / f"lat{n}.safetensors"))
    (tmp_path / "peak.py").write_text(PEAK)
    peaks = {}
    for how in ("stream", "diffusers"):
        for n in (10, 40):  # each in a fresh process: its peak RSS is that one decode's
            subprocess.run([sys.executable, tmp_path / "peak.py", tmp_path / "vae", tmp_path / f"lat{n}.safetensors",
                            how, tmp_path / "peak"], check=True, stdout=subprocess.DEVNULL, timeout=600)
            peaks.setdefault(how, []).append(int((tmp_path / "peak").read_text()))
    short, long = peaks["stream"]
    assert long <= 1.1 * short, f"streamed: peak RSS {long / 2**20:.0f} MiB at 40 latent frames, {short / 2**20:.0f} at 10"
    clip = 3 * pixel_frames(40) * (8 * grid) ** 2 * 4  # the 40-frame clip vae.decode returns, float32
    short, long = peaks["diffusers"]
    assert long - short > clip / 2, f"vae.decode: {short / 2**20:.0f} -> {long / 2**20:.0f} MiB"
