"""fp8 "XL-Opt": every Linear's weight stored as e4m3 with one scale per output channel, its input scaled
per row (token) as it arrives.

On GPUs with fp8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell) the product is one
`torch._scaled_mm` with rowwise scales. Elsewhere (the CPU, older GPUs) the same quantized numbers are
dequantized and multiplied in the compute dtype, so the CPU runs and tests the very quantization the GPU
uses; only the accumulation order differs.
"""
from __future__ import annotations

from functools import cache

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


def scaled_mm_works(device) -> bool:
    """Whether rowwise-scaled fp8 GEMMs (with a bf16 bias) run here: a CUDA GPU of compute capability 8.9+ and
    a torch that has them. Tried once per device on a small product (some builds lack the rowwise kernel)."""
    device = torch.device(device)
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(device)


@cache  # per device: probed once (a small product), then looked up
def _probe(device: torch.device) -> bool:
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False
    try:
        a, sa = quantize_rows(torch.ones(16, 32, device=device))
        b, sb = quantize_rows(torch.ones(16, 32, device=device))
        bias = torch.zeros(16, device=device, dtype=torch.bfloat16)
        torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), bias=bias, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, TypeError, ValueError):  # current torch raises ValueError for what it cannot do
        return False


class Fp8Linear(nn.Module):
    """A Linear with e4m3 weights [out, in] and float32 per-output-channel scales; bias in the compute dtype.

    The GEMM path follows the weight's device: a move (`.to("cuda")`, `pipe.to("cuda")`) chooses it again
    (`scaled_mm=None`; True/False force one path). A dtype cast of the module (`.to(torch.bfloat16)`, `.half()`,
    a pipeline's `torch_dtype`) changes the compute dtype, i.e. the bias and the output, and leaves the e4m3
    weight and its float32 scales as they are: casting them would undo the quantization.
    `fast_accum`: _scaled_mm's use_fast_accum (fp8 tensor cores accumulate in lower precision; faster), off
    unless `set_fast_accum` turns it on.
    """

    def __init__(self, linear: nn.Linear, scaled_mm: bool | None = None):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)  # [out, 1]
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # _scaled_mm needs both GEMM dims of the weight to be multiples of 16; other shapes dequantize.
        self.fits = self.in_features % 16 == 0 and self.out_features % 16 == 0
        self.fast_accum = False
        self.scaled_mm = self.choose_path() if scaled_mm is None else scaled_mm and self.fits

    def choose_path(self) -> bool:
        return self.fits and scaled_mm_works(self.weight.device)

    def _apply(self, fn, recurse=True):
        weight, scale = self._buffers.pop("weight"), self._buffers.pop("scale")
        try:
            super()._apply(fn, recurse)  # the bias: device and dtype
            device = fn(torch.empty(0, device=weight.device)).device  # where this call sends tensors
            weight, scale = weight.to(device), scale.to(device)  # the device only
        finally:
            self._buffers["weight"], self._buffers["scale"] = weight, scale
        self.scaled_mm = self.choose_path()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        xq, xscale = quantize_rows(rows)
        if self.scaled_mm and x.dtype == torch.bfloat16:  # rowwise-scaled fp8 GEMMs write bf16
            # x [M, K] row-major times weight.t() [K, N] column-major, as cuBLASLt wants it; the bias in the epilogue
            fused = self.bias is not None and self.bias.dtype == x.dtype
            out = torch._scaled_mm(xq.contiguous(), self.weight.t(), scale_a=xscale, scale_b=self.scale.t(),
                                   bias=self.bias if fused else None, out_dtype=x.dtype,
                                   use_fast_accum=self.fast_accum)
            out = out if fused or self.bias is None else out + self.bias
        else:
            out = F.linear((xq.float() * xscale).to(x.dtype), (self.weight.float() * self.scale).to(x.dtype), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scaled_mm={self.scaled_mm}, "
                f"fast_accum={self.fast_accum}")


def quantize_linears(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """Replace every nn.Linear in `model` (in place) by an Fp8Linear, except those named in `keep`.
    Inference only: no gradients. Each layer picks its GEMM from its weight's device."""
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and f"{prefix}.{name}".lstrip(".") not in keep:
                setattr(module, name, Fp8Linear(child))
    return model


def set_fast_accum(model: nn.Module, enabled: bool = True) -> None:
    """Turn _scaled_mm's fast accumulation on or off for every Fp8Linear in `model` (GPU fp8 GEMMs only)."""
    for m in model.modules():
        if isinstance(m, Fp8Linear):
            m.fast_accum = enabled
