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
