"""Images for super-resolution: reading, colour, resizing, patches, and the hidden
"realistic" degradation that stands in for real low-resolution photos.

Images are float tensors (3, H, W) in [0, 1]. Bicubic resizing goes through Pillow
(a = -0.5, antialiased when shrinking, as MATLAB's imresize), which the published bicubic
figures are computed with; `bicubic_down_torch` is the differentiable version used as the
fixed degradation of the SR-NAM baseline.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor


class ImageError(ValueError):
    """An input image that cannot be used (unreadable, not RGB, too small)."""


def load_rgb(path: Path, min_size: int = 1) -> Tensor:
    """(3, H, W) in [0, 1]; a clear ImageError for unreadable, non-RGB (grey and palette
    images are converted) or too small files."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, img = im.mode, im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"cannot read image '{path}': {e}") from None
    if mode in ("L", "P"):  # grey (Set14 has one) and palette images: as 8-bit RGB
        img = img.convert("RGB")
    elif mode != "RGB":
        raise ImageError(f"'{path}' is not an 8-bit RGB or grey image (mode {mode}); "
                         "convert it to RGB first")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if min(x.shape[1:]) < min_size:
        raise ImageError(f"'{path}' is {x.shape[2]}x{x.shape[1]} pixels, smaller than the "
                         f"{min_size}-pixel patch it is cut into")
    return x.contiguous()


def save_rgb(x: Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy()).save(path)


def to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def quantize(x: Tensor) -> Tensor:
    """Round to 8 bits, as a saved image would be."""
    return to_uint8(x).float() / 255


def rgb_to_y(x: Tensor) -> Tensor:
    """Luma of ITU-R BT.601 in [16, 235] (MATLAB's rgb2ycbcr), from RGB in [0, 1]:
    Y = 16 + 65.481 R + 128.553 G + 24.966 B."""
    r, g, b = x.unbind(-3)
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of (3, H, W) to (h, w) with Pillow, channel by channel in float."""
    h, w = size
    chans = [np.asarray(Image.fromarray(c.numpy(), mode="F").resize((w, h), Image.BICUBIC))
             for c in x.float()]
    return torch.from_numpy(np.stack(chans)).clamp(0, 1)


def bicubic_down_torch(x: Tensor, scale: int) -> Tensor:
    """Differentiable antialiased bicubic down-scaling of (N, 3, H, W) by `scale`."""
    return F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True,
                         align_corners=False)


def random_patches(images: list[Tensor], n: int, size: int, gen: torch.Generator,
                   flips: bool = True) -> Tensor:
    """n random (3, size, size) crops, from images chosen uniformly; (n, 3, size, size)."""
    out = torch.empty(n, 3, size, size)
    idx = torch.randint(len(images), (n,), generator=gen)
    for k, i in enumerate(idx.tolist()):
        img = images[i]
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=gen))
        p = img[:, top:top + size, left:left + size]
        if flips and bool(torch.randint(2, (1,), generator=gen)):
            p = p.flip(-1)
        out[k] = p
    return out


def noise_level(img: Tensor) -> float:
    """Blind estimate of the std of white noise in an image (3, H, W): the median absolute
    diagonal Haar detail coefficient over 0.6745 (Donoho & Johnstone 1994, Sec. 4.2),
    pooled over the colour channels. Fine texture in the image biases it upwards."""
    h, w = img.shape[-2] // 2 * 2, img.shape[-1] // 2 * 2
    x = img[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return float(hh.abs().median() / 0.6745)


# ------------------------------------------------------------------ hidden degradation

@dataclass
class Degradation:
    """The simulated camera, hidden from every model: per image, a random anisotropic
    Gaussian blur (sigmas in `sigma`, any angle), down-sampling by taking every
    `scale`-th pixel, Gaussian noise (std in `noise`, of 255), then JPEG (quality in
    `jpeg`). Parameters are drawn from `seed` and the image index, so a given image is
    always degraded the same way. LR pixel j is centred on HR position s*j + (s-1)/2, as
    in the provided bicubic LR: for even s the blur is centred half a pixel before the
    pixel taken (the misalignment Zhang et al. 2021, BSRGAN, correct for)."""

    scale: int = 4
    sigma: tuple[float, float] = (1.8, 3.2)  # the width range of IKC's x4 "Gaussian8"
    noise: tuple[float, float] = (1.0, 5.0)
    jpeg: tuple[int, int] = (70, 95)
    seed: int = 0

    def params(self, index: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        u = torch.rand(5, generator=g).tolist()
        lo, hi = self.sigma
        return {"sigma_x": lo + (hi - lo) * u[0], "sigma_y": lo + (hi - lo) * u[1],
                "theta": math.pi * u[2],
                "noise": self.noise[0] + (self.noise[1] - self.noise[0]) * u[3],
                "jpeg": int(round(self.jpeg[0] + (self.jpeg[1] - self.jpeg[0]) * u[4])),
                "noise_seed": int(torch.randint(2**31 - 1, (1,), generator=g))}

    def blur_kernel(self, index: int) -> Tensor:
        """Image `index`'s blur, centred half a pixel before the taken pixel for even s."""
        p, s = self.params(index), self.scale
        return gaussian_kernel(p["sigma_x"], p["sigma_y"], p["theta"], size=4 * s + 1,
                               shift=s // 2 - (s - 1) / 2)

    def __call__(self, hr: Tensor, index: int) -> Tensor:
        p = self.params(index)
        s = self.scale
        k = self.blur_kernel(index)
        # blur, then keep pixels s//2, s//2 + s, ...: only those are computed
        lr = conv_same(hr.unsqueeze(0), k, s, s // 2).squeeze(0)[:, : hr.shape[1] // s,
                                                                 : hr.shape[2] // s]
        g = torch.Generator().manual_seed(p["noise_seed"])
        lr = (lr + torch.randn(lr.shape, generator=g) * p["noise"] / 255).clamp(0, 1)
        return jpeg(lr, int(p["jpeg"]))

    def mean_kernel(self, samples: int = 256) -> Tensor:
        """The average blur kernel of the family (for measuring a learned D against)."""
        ks = [gaussian_kernel(**{k: v for k, v in self.params(i).items()
                                 if k in ("sigma_x", "sigma_y", "theta")},
                              size=4 * self.scale + 1) for i in range(samples)]
        return torch.stack(ks).mean(0)

    def mean_noise(self, samples: int = 256) -> float:
        """The average noise std of the family, of 255."""
        return sum(self.params(i)["noise"] for i in range(samples)) / samples


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float, size: int,
                    shift: float = 0.0) -> Tensor:
    """A normalised (size, size) anisotropic Gaussian rotated by theta, centred `shift`
    pixels before the middle (up and left); as a correlation kernel it then averages
    around a point `shift` pixels before the output pixel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2 + shift
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).float()


def conv_same(x: Tensor, kernel: Tensor, stride: int = 1, offset: int = 0) -> Tensor:
    """(N, C, H, W) convolved channel-wise with one (k, k) kernel, reflect padding; with a
    stride, only the output pixels offset, offset + stride, ... are computed (the values of
    conv_same(x, kernel)[..., offset::stride, offset::stride])."""
    k = kernel.shape[-1]
    w = kernel.expand(x.shape[1], 1, k, k)
    xp = F.pad(x, [k // 2] * 4, mode="reflect")[..., offset:, offset:]
    return F.conv2d(xp, w, stride=stride, groups=x.shape[1])


def jpeg(x: Tensor, quality: int) -> Tensor:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x).permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255
                                ).permute(2, 0, 1).contiguous()
