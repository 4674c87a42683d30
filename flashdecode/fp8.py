"""fp8 "XL-Opt": every Linear's weight stored as e4m3 with one scale per output channel, its input scaled
per row (token) as it arrives.

On GPUs with fp8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell) the product is one
`torch._scaled_mm` with rowwise scales. Elsewhere (the CPU, older GPUs) the same quantized numbers are
dequantized and multiplied in the compute dtype, so the CPU runs and tests the very quantization the GPU
uses; only the accumulation order differs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scales [M, 1]) with x ~= q * scale: each row's largest magnitude
    maps to e4m3's largest value, so every row uses the whole range whatever its own size."""
    # max |x| per row in one reduction (no |x| temporary); an all-zero row keeps a tiny scale and stays zero
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / E4M3_MAX
    return torch.div(x, scale).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3), scale  # one float32 temporary


def scaled_mm_works(device: torch.device) -> bool:
    """Whether rowwise-scaled fp8 GEMMs run here: a CUDA GPU of compute capability 8.9+ and a torch that
    has them (tried once on a small product; some builds lack the rowwise kernel)."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm") or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    try:
        a, sa = quantize_rows(torch.ones(16, 32, device=device))
        b, sb = quantize_rows(torch.ones(16, 32, device=device))
        torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, TypeError):
        return False


class Fp8Linear(nn.Module):
    """A Linear with e4m3 weights [out, in] and float32 per-output-channel scales; bias in the compute dtype."""

    def __init__(self, linear: nn.Linear, scaled_mm: bool):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)  # [out, 1]
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaled_mm = scaled_mm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        xq, xscale = quantize_rows(rows)
        if self.scaled_mm:  # x [M, K] row-major times weight.t() [K, N] column-major, as cuBLASLt wants it
            out = torch._scaled_mm(xq.contiguous(), self.weight.t(), scale_a=xscale, scale_b=self.scale.t(), out_dtype=x.dtype)
            out = out if self.bias is None else out + self.bias
        else:
            out = F.linear((xq.float() * xscale).to(x.dtype), (self.weight.float() * self.scale).to(x.dtype), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scaled_mm={self.scaled_mm}"


def quantize_linears(model: nn.Module, scaled_mm: bool, keep: tuple[str, ...] = ()) -> nn.Module:
    """Replace every nn.Linear in `model` (in place) by an Fp8Linear, except those named in `keep`.
    Inference only: no gradients."""
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and f"{prefix}.{name}".lstrip(".") not in keep:
                # _scaled_mm needs both GEMM dims of the weight to be multiples of 16; other shapes dequantize.
                fits = child.in_features % 16 == 0 and child.out_features % 16 == 0
                setattr(module, name, Fp8Linear(child, scaled_mm and fits))
    return model
