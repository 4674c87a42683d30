import math

import numpy as np
import pytest
import torch

from flashdecode.training.metrics import psnr, ssim, ssim_per_image


def clips(b=2, t=3, h=24, w=32, seed=0):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5


def test_identical_clips():
    x = clips()
    assert psnr(x, x) == [math.inf, math.inf]
    assert ssim(x, x) == pytest.approx([1.0, 1.0], abs=1e-12)


def test_psnr_of_a_constant_offset_is_analytical():
    x = clips()
    # An offset of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025, PSNR = -20 log10(0.05) = 26.0206 dB.
    assert psnr(x, x + 0.1) == pytest.approx([-20 * math.log10(0.05)] * 2, abs=1e-9)
    y = x.clone()
    y[1] += 0.2
    assert psnr(x, y) == pytest.approx([math.inf, -20 * math.log10(0.1)])  # one float per clip
    assert len(psnr(x[0], y[0])) == 1  # a single clip [3, T, H, W]


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = 0.3, 0.7  # in [0, 1]
    x = torch.full((1, 3, 2, 16, 16), 2 * a - 1, dtype=torch.float64)
    y = torch.full((1, 3, 2, 16, 16), 2 * b - 1, dtype=torch.float64)
    c1 = 0.01**2
    assert ssim(x, y)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_orders_degradations_and_is_symmetric():
    x = clips(b=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    mild, strong = ssim(x, x + 0.02 * noise)[0], ssim(x, x + 0.2 * noise)[0]
    assert 1 > mild > strong > 0
    assert ssim(x + 0.2 * noise, x)[0] == pytest.approx(strong, abs=1e-12)


def test_ssim_per_image_is_a_differentiable_loss():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    y = torch.rand(4, 1, 16, 16)
    loss = (1 - ssim_per_image(x, y)).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_against_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = clips(b=1, t=1), clips(b=1, t=1, seed=5)
    to_img = lambda c: ((c[0, :, 0].permute(1, 2, 0).double().numpy()) + 1) / 2  # noqa: E731
    ref = metrics.structural_similarity(to_img(x), to_img(y), channel_axis=2, data_range=1.0,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(x, y)[0] == pytest.approx(ref, abs=1e-6)
    assert psnr(x, y)[0] == pytest.approx(metrics.peak_signal_noise_ratio(to_img(x), to_img(y), data_range=1.0))
    assert np.isfinite(ref)
