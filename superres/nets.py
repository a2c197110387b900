"""Networks of SR-NAM (Lioutas 2020, Sec. 3): the unconditional HR-patch generator G and
its critic, the HR -> LR degradation network D, and the SRCNN-sized supervised baseline.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class Generator(nn.Module):
    """z (N, z_dim) -> HR patch (N, 3, size, size) in [0, 1]: a linear map to a 4x4 grid,
    then (nearest up-sampling x2, 3x3 conv, batch norm, ReLU) until `size` (DCGAN-style,
    with resize-convolutions instead of transposed ones to avoid checkerboards)."""

    def __init__(self, z_dim: int = 64, size: int = 32, width: int = 32):
        super().__init__()
        n_up = (size // 4).bit_length() - 1
        if 4 * 2 ** n_up != size:
            raise ValueError(f"patch size must be 4 * 2^k, got {size}")
        self.z_dim, self.size = z_dim, size
        chans = [width * 2 ** (n_up - i) for i in range(n_up + 1)]  # e.g. 256, 128, 64, 32
        self.fc = nn.Linear(z_dim, chans[0] * 16)
        self.norm0 = nn.BatchNorm2d(chans[0])
        self.ups = nn.ModuleList(nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b),
            nn.ReLU()) for a, b in zip(chans[:-1], chans[1:], strict=True))
        self.out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # (N, z_dim) -> (N, 3, S, S)
        x = F.relu(self.norm0(self.fc(z).view(len(z), -1, 4, 4)))  # (N, C0, 4, 4)
        for up in self.ups:
            x = up(x)
        return torch.sigmoid(self.out(x))


class Critic(nn.Module):
    """Spectrally normalised convolutional critic (Miyato et al. 2018) for the hinge loss."""

    def __init__(self, size: int = 32, width: int = 32):
        super().__init__()
        layers, c = [], 3
        for i in range((size // 4).bit_length() - 1):
            layers += [spectral_norm(nn.Conv2d(c, width * 2 ** i, 3, padding=1)),
                       nn.LeakyReLU(0.1),
                       spectral_norm(nn.Conv2d(width * 2 ** i, width * 2 ** i, 4, 2, 1)),
                       nn.LeakyReLU(0.1)]
            c = width * 2 ** i
        self.body = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(c * 16, 1))

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, S, S) -> (N,)
        return self.head(self.body(2 * x - 1).flatten(1)).squeeze(1)


class Degradation(nn.Module):
    """HR (N, 3, H, W) -> LR (N, 3, H/s, W/s): a learned camera blur and subsampling. The
    blur is one (4s, 4s) kernel shared by the colour channels, applied with stride s and
    reflect padding, kept physical (non-negative, summing to 1) by a softmax over its
    entries. `kernel` says what the softmax is taken of:

    - "gaussian": -1/2 the squared Mahalanobis distance to a learned centre under a learned
      covariance L L^T (L lower-triangular, log-diagonal): an anisotropic Gaussian blur, the
      kernel model of blind SR (Zhang et al. 2018, SRMD; Gu et al. 2019, IKC), 5 parameters.
    - "free": one logit per entry, any non-negative kernel. NAM training fits it to what G
      can draw as well as to the camera: with stride s it grows spikes on the s-periodic
      structure of G's up-sampled patches (results/srnam_kernel.md), which make aliased
      training pairs.

    Both start as an isotropic Gaussian of std `sigma` px (default s/2) on the centre.
    `residual=True` adds a small CNN at low resolution, zero at the start, for
    compression-like effects. `noise_std` (a buffer, set from a blind estimate on the LR
    photos, not trained) is the camera's noise level: `sample` adds it, for making training
    pairs; `forward` is the noise-free mean, which latent fitting uses.

    The constraint matters for NAM training: G cannot reproduce every patch exactly, and
    an unconstrained D learns to make up for G's errors (colour, contrast) instead of
    modelling the camera, which then fails on real HR images."""

    def __init__(self, scale: int = 4, residual: bool = False, width: int = 16,
                 sigma: float | None = None, kernel: Literal["gaussian", "free"] = "gaussian"):
        super().__init__()
        self.scale, self.size, sigma = scale, 4 * scale, sigma or scale / 2
        if kernel == "free":
            r = torch.arange(self.size) - (self.size - 1) / 2
            self.logits = nn.Parameter(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
        elif kernel == "gaussian":
            self.log_diag = nn.Parameter(torch.full((2,), math.log(sigma)))  # (y, x)
            self.off_diag = nn.Parameter(torch.zeros(()))
            self.centre = nn.Parameter(torch.zeros(2))  # (y, x) px from the middle
        else:
            raise ValueError(f"unknown blur kernel '{kernel}': gaussian or free")
        self.kernel = kernel
        self.residual = None
        if residual:
            self.residual = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(width, 3, 3, padding=1))
            nn.init.zeros_(self.residual[-1].weight)
            nn.init.zeros_(self.residual[-1].bias)
        self.register_buffer("noise_std", torch.zeros(()))  # of 1, not of 255

    def _load_from_state_dict(self, state: dict, prefix: str, *args: Any) -> None:
        state.setdefault(prefix + "noise_std", torch.zeros(()))  # saved before it existed
        super()._load_from_state_dict(state, prefix, *args)

    def kernel_logits(self) -> Tensor:  # (k, k)
        """The blur's log-weights up to a constant: the free logits, or -1/2 the squared
        Mahalanobis distance d^T (L L^T)^-1 d = |L^-1 d|^2 of each tap to the centre."""
        if self.kernel == "free":
            return self.logits
        r = torch.arange(self.size, dtype=self.centre.dtype, device=self.centre.device)
        r = r - (self.size - 1) / 2
        dy, dx = torch.meshgrid(r - self.centre[0], r - self.centre[1], indexing="ij")
        ly, lx = self.log_diag.exp()
        u = dy / ly  # L^-1 d for L = [[ly, 0], [off, lx]]
        v = (dx - self.off_diag * u) / lx
        return -0.5 * (u**2 + v**2)

    def blur_kernel(self) -> Tensor:  # (k, k), non-negative, sums to 1
        logits = self.kernel_logits()
        return torch.softmax(logits.flatten(), 0).view_as(logits)

    def forward(self, hr: Tensor) -> Tensor:
        s, k = self.scale, self.size
        h, w = hr.shape[-2] // s * s, hr.shape[-1] // s * s
        pad = [(k - s) // 2, k - s - (k - s) // 2] * 2  # left, right, top, bottom
        x = F.pad(hr[..., :h, :w], pad, mode="reflect")
        kernel = self.blur_kernel().expand(3, 1, k, k)
        lr = F.conv2d(x, kernel, stride=s, groups=3)  # (N, 3, h/s, w/s)
        return lr + self.residual(lr) if self.residual is not None else lr

    def sample(self, hr: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """One draw of the camera: the mean degradation plus white Gaussian noise of the
        estimated level, the way Bulat et al. (2018) make LR training images."""
        lr = self(hr)
        return lr + self.noise_std * torch.randn(lr.shape, generator=gen)


class SRCNN(nn.Module):
    """SRCNN (Dong et al. 2014): 9x9 -> 64, 1x1 -> 32, 5x5 -> 3 on the bicubic-upsampled
    image, here predicting the residual to the bicubic input (faster to train on CPU)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 9, padding=4), nn.ReLU(),
                                  nn.Conv2d(64, 32, 1), nn.ReLU(),
                                  nn.Conv2d(32, 3, 5, padding=2))

    def forward(self, upsampled: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, 3, H, W)
        return upsampled + self.body(upsampled)
