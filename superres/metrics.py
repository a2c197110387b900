"""Super-resolution metrics the standard way: PSNR and SSIM on the Y channel (BT.601,
[16, 235]) with `border` pixels cropped on every side; SSIM with an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, over the 'valid' region (Wang et al. 2004,
Eq. 13), averaged over the image. And the one-to-many figures of SR-NAM: best-of-K,
mean-of-K, diversity and consistency.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tdx.superres.images import quantize, rgb_to_y


def _y(x: Tensor, border: int) -> Tensor:
    """8-bit-rounded image -> Y, cropped; float64 (H', W')."""
    y = rgb_to_y(quantize(x).double())
    return y[border:y.shape[0] - border, border:y.shape[1] - border] if border else y


def psnr(sr: Tensor, hr: Tensor, border: int = 4) -> float:
    """PSNR in dB of two (3, H, W) RGB images in [0, 1], on Y with `border` cropped."""
    mse = float(((_y(sr, border) - _y(hr, border)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: Tensor) -> Tensor:
    """(N, 1, H, W) -> (N, 1, H-10, W-10): the 11x11 Gaussian window, applied as its two
    1-D factors (the window is their outer product: 22 products per pixel, not 121)."""
    g = _gaussian_1d()
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def ssim_y(a: Tensor, b: Tensor) -> float:
    """Mean SSIM of two single-channel float64 images in [0, 255] (valid region)."""
    mu_a, mu_b, aa, bb, ab = _blur(torch.stack([a, b, a * a, b * b, a * b])[:, None])[:, 0]
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                     * (var_a + var_b + c2))
    return float(s.mean())


def ssim(sr: Tensor, hr: Tensor, border: int = 4) -> float:
    return ssim_y(_y(sr, border), _y(hr, border))


def one_to_many(candidates: list[Tensor], hr: Tensor, lr: Tensor,
                degrade: Callable[[Tensor], Tensor], border: int = 4) -> dict[str, float]:
    """SR-NAM's figures for K candidate HR images of one LR input: best-of-K and
    mean-of-K PSNR/SSIM, diversity (mean per-pixel std across candidates, of 255) and
    consistency (mean absolute error of degrade(candidate) against the LR input, of 255)."""
    ps = [psnr(c, hr, border) for c in candidates]
    ss = [ssim(c, hr, border) for c in candidates]
    stack = torch.stack([quantize(c) for c in candidates])
    diversity = float(stack.std(0, unbiased=False).mean()) * 255 if len(candidates) > 1 else 0.0
    with torch.no_grad():
        cons = [float((degrade(c[None])[0] - lr).abs().mean()) * 255 for c in candidates]
    return {"psnr_best": max(ps), "psnr_mean": sum(ps) / len(ps), "ssim_best": max(ss),
            "ssim_mean": sum(ss) / len(ss), "diversity": diversity,
            "consistency": sum(cons) / len(cons)}
