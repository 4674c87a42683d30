"""fp8 "XL-Opt" on the bundled demo decoder and sample: quality against float32, real stored bytes."""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import flashdecode
from flashdecode.fp8 import E4M3, Fp8Linear, quantize_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample():
    return load_file(str(REPO / "samples" / "cockatoo_256x256_41f.safetensors"))["latents"][:, :, :6]


def test_fp8_output_is_within_40_db_of_float32_at_half_the_bytes(sample):
    reference = flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp32")
    fp8 = flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp8")
    bf16 = flashdecode.load_decoder(None, "demo", device="cpu", dtype="bf16")
    assert fp8.precision == "fp8" and fp8.num_parameters() == reference.num_parameters()
    linears = [m for m in fp8.model.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == (4 + 2) * 4 + 1 + 2 and all(m.weight.dtype == E4M3 for m in linears)
    a, b = reference.decode(sample), fp8.decode(sample)
    psnr = 10 * math.log10(4 / ((a - b) ** 2).mean().item())  # pixels span [-1, 1]: peak-to-peak 2
    print(f"fp8 vs float32: {psnr:.2f} dB")
    assert 40 <= psnr < 80, psnr  # and not bit-identical: the fp8 path did run
    assert fp8.weight_bytes() <= 0.55 * bf16.weight_bytes(), (fp8.weight_bytes(), bf16.weight_bytes())


def test_rowwise_quantization_keeps_each_rows_range():
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1, 10, 300, 0.0])[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (5, 1)
    back = q.float() * scale
    assert torch.equal(back[4], torch.zeros(64))  # an all-zero row stays zero (no 0/0)
    rel = (back[:4] - x[:4]).abs().amax(1) / x[:4].abs().amax(1)
    assert (rel <= 2**-4).all(), rel  # e4m3: 3 mantissa bits, half an ulp at most, whatever the row's scale


def test_fp8_linear_matches_its_dequantized_product():
    lin = torch.nn.Linear(64, 48).to(torch.bfloat16)
    fp8, x = Fp8Linear(lin, scaled_mm=False), torch.randn(2, 7, 64, dtype=torch.bfloat16)
    wq, ws = quantize_rows(lin.weight)
    xq, xs = quantize_rows(x.reshape(-1, 64))
    expected = ((xq.float() * xs) @ (wq.float() * ws).T + lin.bias.float()).reshape(2, 7, 48)
    assert fp8(x).shape == (2, 7, 48)
    assert (fp8(x).float() - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.cuda
def test_scaled_mm_path_matches_the_dequantized_path():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor cores need compute capability 8.9+")
    lin = torch.nn.Linear(256, 512, device="cuda").to(torch.bfloat16)
    x = torch.randn(100, 256, device="cuda", dtype=torch.bfloat16)
    fast, slow = Fp8Linear(lin, scaled_mm=True)(x).float(), Fp8Linear(lin, scaled_mm=False)(x).float()
    assert (fast - slow).abs().max() < 0.02 * slow.abs().max()


def test_dtype_casts_keep_fp8_weights_and_float32_scales():
    lin = Fp8Linear(torch.nn.Linear(64, 48))
    weight, scale = lin.weight.clone(), lin.scale.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float(), lambda m: m.to("cpu")):
        cast(lin)
        assert lin.weight.dtype == E4M3 and lin.scale.dtype == torch.float32
        assert torch.equal(lin.weight.view(torch.uint8), weight.view(torch.uint8)) and torch.equal(lin.scale, scale)
    lin.to(torch.bfloat16)  # the compute dtype follows the cast: the bias and the output
    assert lin.bias.dtype == torch.bfloat16 and lin(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert {k: v.dtype for k, v in lin.state_dict().items()} == {"weight": E4M3, "scale": torch.float32,
                                                                   "bias": torch.bfloat16}


def test_gemm_path_follows_the_weights_device(monkeypatch):
    import flashdecode.fp8 as fp8

    monkeypatch.setattr(fp8, "scaled_mm_works", lambda device: torch.device(device).type == "meta")
    lin = Fp8Linear(torch.nn.Linear(64, 48))
    assert lin.scaled_mm is False  # built on the CPU
    lin.to("meta")  # stands for pipe.to("cuda"): chosen again where the weight now lives
    assert lin.scaled_mm is True and lin.weight.device.type == "meta" and lin.weight.dtype == E4M3
    assert Fp8Linear(torch.nn.Linear(60, 48), scaled_mm=True).scaled_mm is False  # 60: not a multiple of 16


def test_scaled_mm_probe_treats_a_value_error_as_unsupported(monkeypatch):
    import flashdecode.fp8 as fp8

    def refuse(*args, **kwargs):
        raise ValueError("unsupported shape")  # what current torch raises

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    assert fp8._probe(torch.device("cpu")) is False  # not a crash in load_decoder
    assert fp8.scaled_mm_works("cpu") is False


def test_diffusers_adapter_keeps_fp8_through_casts(sample):
    pytest.importorskip("transformers")
    from flashdecode.integrations.diffusers import FlashDecoderVAE

    reference = flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp32")
    vae = FlashDecoderVAE(flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp8"))
    vae.to(torch.bfloat16)  # what WanPipeline(torch_dtype=torch.bfloat16) and pipe.to(dtype) do
    vae.to("cpu")
    linears = [m for m in vae.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 27
    assert all(m.weight.dtype == E4M3 and m.scale.dtype == torch.float32 for m in linears)
    assert vae.dtype == torch.bfloat16 and vae.decoder.dtype == torch.bfloat16  # the compute dtype followed
    z = sample[:, :, :3, :8, :8]  # bf16 is slow on a CPU: 3 latent frames, a 128x128 crop
    a, b = reference.decode(z), vae.decode(reference.latent_space.denormalize(z).bfloat16()).sample.float()
    psnr = 10 * math.log10(4 / ((a - b) ** 2).mean().item())
    print(f"fp8 through the diffusers adapter after .to(bfloat16) vs float32: {psnr:.2f} dB")
    assert 40 <= psnr < 80, psnr


def scaled_mm_calls(monkeypatch) -> list:
    calls, real = [], torch._scaled_mm

    def spy(*args, **kwargs):
        calls.append(kwargs.get("bias") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    return calls


@pytest.mark.cuda
def test_diffusers_adapter_uses_fp8_gemms_after_moving_to_cuda(sample, monkeypatch):
    pytest.importorskip("transformers")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor cores need compute capability 8.9+")
    from flashdecode.integrations.diffusers import FlashDecoderVAE

    reference = flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp32")
    raw = reference.latent_space.denormalize(sample)
    vae = FlashDecoderVAE(flashdecode.load_decoder(None, "demo", device="cpu", dtype="fp8"))  # built on the CPU
    calls = scaled_mm_calls(monkeypatch)
    for move in (lambda m: m.to("cuda"), lambda m: m.to(torch.bfloat16)):
        move(vae)
        linears = [m for m in vae.modules() if isinstance(m, Fp8Linear)]
        assert all(m.weight.dtype == E4M3 and m.scale.dtype == torch.float32 and m.scaled_mm for m in linears)
        calls.clear()
        out = vae.decode(raw.cuda().bfloat16()).sample.float().cpu()
        assert len(calls) >= 27 and any(calls)  # every product an fp8 GEMM, the biases fused in
        psnr = 10 * math.log10(4 / ((reference.decode(sample) - out) ** 2).mean().item())
        assert 40 <= psnr < 80, psnr


@pytest.mark.cuda
def test_fast_accumulation_quality_on_cuda(sample):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor cores need compute capability 8.9+")
    from flashdecode.fp8 import set_fast_accum

    bf16 = flashdecode.load_decoder(None, "demo", device="cuda", dtype="bf16").decode(sample.cuda())
    fp8 = flashdecode.load_decoder(None, "demo", device="cuda", dtype="fp8")
    psnr = {}
    for fast in (False, True):
        set_fast_accum(fp8.model, fast)
        out = fp8.decode(sample.cuda())
        psnr[fast] = 10 * math.log10(4 / ((bf16 - out) ** 2).mean().item())
    print(f"fp8 vs bf16 on CUDA: {psnr[False]:.2f} dB, with use_fast_accum {psnr[True]:.2f} dB")
    assert psnr[True] >= 40 and psnr[True] >= psnr[False] - 1.0, psnr
