"""SR-NAM (Lioutas 2020): one-to-many x4 super-resolution by non-adversarial mapping with a
learned degradation model, and the baselines it is compared with. The `srnam` recipe of
the plain-PyTorch engine; stages (in order, any subset via `srnam.stages`):

1. generator       G: z -> HR patch, a hinge-loss GAN on T91 patches (Sec. 3.1).
2. degradation     D: HR -> LR learned NAM-style (Hoshen & Wolf 2018; SR-NAM Sec. 3.2): one
                   latent code z_i per realistic LR patch y_i, codes and D optimised
                   jointly on |D(G(z_i)) - y_i|_1 + a Laplacian-pyramid L1 term, G frozen.
                   No HR image is paired with y_i. (VGG features, which the paper's
                   perceptual distance uses, are not available offline: the pyramid L1
                   replaces them.) D's noise level is a blind estimate on the same LR
                   photos (`images.noise_level`), used only when D makes training pairs.
3. srcnn_bicubic   the supervised baseline on bicubic T91 pairs,
4. srcnn_learned   the same CNN on pairs made by the learned D (as Bulat et al. 2018 use a
                   learned degradation).
5. evaluate        Set5/Set14 x4 on the provided bicubic LR and on "realistic" LR made by a
                   hidden degradation (`images.Degradation`): bicubic up-sampling, both
                   CNNs, SR-NAM with the learned D and with a fixed bicubic D (Sec. 3.3:
                   K latent codes per LR patch optimised with G and D frozen, candidates
                   blended over overlapping patches).

G and the CNNs see only the first `g_split` T91 images; the realistic LR patches D learns
from come from the others, degraded by the hidden pipeline whose parameters no model sees.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from tdx import distributed
from tdx.errors import Interrupted, UsageError
from tdx.loop import Stage, run_stage, step_generator
from tdx.run import RunDir, StopFlag
from tdx.superres.images import (
    Degradation,
    ImageError,
    bicubic_down_torch,
    load_rgb,
    noise_level,
    quantize,
    random_patches,
    resize,
    save_rgb,
)
from tdx.superres.metrics import one_to_many, psnr, ssim
from tdx.superres.nets import SRCNN, Critic, Generator
from tdx.superres.nets import Degradation as DegradationNet

log = logging.getLogger("tdx")
STAGES = ("generator", "degradation", "srcnn_bicubic", "srcnn_learned", "evaluate")
USERS = {"generator": ("degradation", "evaluate"), "degradation": ("srcnn_learned", "evaluate"),
         "srcnn_bicubic": ("evaluate",), "srcnn_learned": ("evaluate",)}  # who needs whose model


# ------------------------------------------------------------------------- data

def t91(cfg: DictConfig) -> tuple[list[Tensor], list[Tensor]]:
    """(images for G and the CNNs, images whose degraded versions D learns from)."""
    folder = Path(cfg.data.t91)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".bmp", ".png"))
    if not files:
        raise UsageError(f"no .bmp/.png images in {folder}")
    try:
        images = [load_rgb(p, min_size=cfg.srnam.srcnn.patch) for p in files]
    except ImageError as e:
        raise UsageError(str(e)) from None
    k = cfg.srnam.g_split
    return images[:k], images[k:]


def data_files(cfg: DictConfig) -> list[str]:
    """The folders an srnam run reads (every image in them is checked before it starts):
    T91, and each evaluation set at the scale."""
    sets = [str(Path(cfg.data.sets) / name / f"x{cfg.srnam.scale}")
            for name in cfg.srnam.eval.sets] if "evaluate" in cfg.srnam.stages else []
    return [str(cfg.data.t91), *sets]


def hidden(cfg: DictConfig, seed: int) -> Degradation:
    h = cfg.srnam.hidden
    return Degradation(scale=cfg.srnam.scale, sigma=tuple(h.sigma), noise=tuple(h.noise),
                       jpeg=tuple(h.jpeg), seed=seed)


# ----------------------------------------------------------------------- stage 1

def generator_stage(cfg: DictConfig, run: RunDir, G: Generator, images: list[Tensor]
                    ) -> Stage:
    """Hinge GAN on T91 patches, plus (weight `recon`) a GLO reconstruction term
    (Bojanowski et al. 2018, the latent-optimisation model NAM builds on): a bank of real
    patches, each with its own code optimised jointly with G on |G(z_j) - x_j|_1. The
    adversarial term keeps samples sharp; the reconstruction term makes G cover the
    patches, which latent fitting (stages 2 and 5) needs."""
    s = cfg.srnam.generator
    C = Critic(cfg.srnam.patch, cfg.srnam.width)
    opt_g = torch.optim.Adam(G.parameters(), lr=s.lr, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=s.lr, betas=(0.0, 0.9))
    held_out = random_patches(images, 64, cfg.srnam.patch, torch.Generator().manual_seed(12345))
    bank = random_patches(images, s.bank, cfg.srnam.patch,
                          torch.Generator().manual_seed(cfg.seed + 7))  # (M, 3, S, S)
    codes = nn.Parameter(torch.randn(s.bank, G.z_dim,
                                     generator=torch.Generator().manual_seed(cfg.seed + 8)))
    opt_z = torch.optim.Adam([codes], lr=s.z_lr)

    def step(i: int) -> dict[str, float]:
        G.train()
        gen = step_generator(cfg.seed, "generator", i)
        real = random_patches(images, s.batch, cfg.srnam.patch, gen)
        z = torch.randn(s.batch, G.z_dim, generator=gen)
        loss_c = F.relu(1 - C(real)).mean() + F.relu(1 + C(G(z).detach())).mean()  # hinge
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        loss_g = -C(G(z)).mean()
        idx = torch.randint(s.bank, (s.batch,), generator=gen)
        rec = (G(codes[idx]) - bank[idx]).abs().mean()
        opt_g.zero_grad()
        opt_z.zero_grad()
        (loss_g + s.recon * rec).backward()
        opt_g.step()
        opt_z.step()
        return {"loss": loss_c.item() + loss_g.item(), "loss_c": loss_c.item(),
                "loss_g": loss_g.item(), "recon": rec.item()}

    def evaluate(i: int) -> dict[str, float]:
        """How well G can represent real patches it did not train on: PSNR of the best
        latent fit of 64 held-out patches (the ceiling of SR-NAM), plus a sample grid."""
        G.eval()
        grid = G(torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(0)))
        save_grid(grid.detach(), run.path / "samples" / f"generator_{i:06d}.png", cols=8)
        fit = fit_codes(G, held_out, lambda x: x, steps=100, lr=0.05, prior=0.0,
                        gen=torch.Generator().manual_seed(1))
        mse = F.mse_loss(quantize(G(fit).detach()), held_out)
        return {"fit_psnr": round(float(10 * torch.log10(1 / mse)), 3)}

    return Stage("generator", s.steps, step, {"G": G, "C": C, "opt_g": opt_g, "opt_c": opt_c,
                                              "codes": codes, "opt_z": opt_z},
                 evaluate, units=s.batch, unit_name="patches")


# ----------------------------------------------------------------------- stage 2

def pyramid(x: Tensor, levels: int) -> tuple[list[Tensor], Tensor]:
    """Laplacian pyramid (Burt & Adelson 1983) with 2x2 averaging and bilinear
    up-sampling: up to `levels` band-pass images, finest first, and the low-pass rest."""
    bands = []
    for _ in range(levels):
        if min(x.shape[-2:]) < 2:
            break
        low = F.avg_pool2d(x, 2)
        bands.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear",
                                       align_corners=False))
        x = low
    return bands, x


def laplacian_l1(a: Tensor, b: Tensor, levels: int = 3) -> Tensor:
    """Sum over a Laplacian pyramid of the mean L1 between band-pass levels."""
    (bands_a, low_a), (bands_b, low_b) = pyramid(a, levels), pyramid(b, levels)
    loss = a.new_zeros(())
    for x, y in zip(bands_a, bands_b, strict=True):
        loss = loss + (x - y).abs().mean()
    return loss + (low_a - low_b).abs().mean()


def contrast_l1(a: Tensor, b: Tensor, levels: int = 2) -> Tensor:
    """Mean over patches of |RMS(band of a) - RMS(band of b)|, summed over the finest
    Laplacian-pyramid levels: a texture-like term that, unlike a pixel distance, does not
    reward a blurrier D(G(z)) when G cannot reproduce y exactly (the drift of D towards
    a wide kernel seen with the pixel terms alone)."""
    rms = lambda band: band.pow(2).mean((1, 2, 3)).add(1e-8).sqrt()  # noqa: E731  (N,)
    loss = a.new_zeros(())
    for x, y in zip(pyramid(a, levels)[0], pyramid(b, levels)[0], strict=True):
        loss = loss + (rms(x) - rms(y)).abs().mean()
    return loss


def camera_photos(cfg: DictConfig, images: list[Tensor]) -> list[Tensor]:
    """The LR photos D learns from: the hidden degradation of `images`."""
    degrade = hidden(cfg, cfg.srnam.hidden.seed)
    return [degrade(img, i) for i, img in enumerate(images)]


def realistic_patches(cfg: DictConfig, photos: list[Tensor], n: int) -> Tensor:
    """n random (patch / scale)-sized crops of the LR photos."""
    p = cfg.srnam.patch // cfg.srnam.scale
    return random_patches(photos, n, p, torch.Generator().manual_seed(cfg.seed + 99))


def degradation_stage(cfg: DictConfig, G: Generator, D: DegradationNet, lr_patches: Tensor,
                      eval_images: list[Tensor]) -> Stage:
    s = cfg.srnam.degradation
    G.eval().requires_grad_(False)
    Z = nn.Parameter(torch.randn(len(lr_patches), G.z_dim,
                                 generator=torch.Generator().manual_seed(cfg.seed)))
    opt = torch.optim.Adam([{"params": D.parameters(), "lr": s.lr},
                            {"params": [Z], "lr": s.z_lr}])
    camera = hidden(cfg, cfg.srnam.hidden.eval_seed)
    targets = [camera(img, 10_000 + i) for i, img in enumerate(eval_images)]

    def step(i: int) -> dict[str, float]:
        rng = step_generator(cfg.seed, "degradation", i)
        idx = torch.randint(len(Z), (s.batch,), generator=rng)
        y, z = lr_patches[idx], Z[idx]
        out = D(G(z))
        l1 = (out - y).abs().mean()
        pyr = laplacian_l1(out, y)
        con = contrast_l1(out, y)
        loss = l1 + s.pyramid * pyr + s.contrast * con + s.prior * z.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "l1": l1.item(), "pyramid": pyr.item(),
                "contrast": con.item()}

    start = degradation_fidelity(D, eval_images, targets, cfg.srnam.scale)["d_psnr_learned"]
    camera_spread, camera_noise = kernel_spread(camera.mean_kernel()), camera.mean_noise()

    def evaluate(i: int) -> dict[str, float]:
        """Fidelity of D now, of D at its start (the Gaussian it is initialised as) and of
        bicubic; the spread (std, px) of D's blur and D's noise level (of 255) against the
        camera's mean kernel and mean noise."""
        return {**degradation_fidelity(D, eval_images, targets, cfg.srnam.scale),
                "d_psnr_start": start, "kernel_std": kernel_spread(D.blur_kernel()),
                "camera_kernel_std": camera_spread,
                "noise_std": round(float(D.noise_std) * 255, 3),
                "camera_noise_std": round(camera_noise, 3)}

    return Stage("degradation", s.steps, step, {"D": D, "Z": Z, "opt": opt}, evaluate,
                 units=s.batch, unit_name="patches")


@torch.no_grad()
def kernel_spread(kernel: Tensor) -> float:
    """Mean of the y and x standard deviations (px) of a non-negative 2-D kernel."""
    k = kernel / kernel.sum()
    stds = []
    for marginal in (k.sum(1), k.sum(0)):
        r = torch.arange(len(marginal), dtype=k.dtype)
        mu = (marginal * r).sum()
        stds.append(float((marginal * (r - mu) ** 2).sum().sqrt()))
    return round(sum(stds) / 2, 3)


@torch.no_grad()
def degradation_fidelity(D: nn.Module, hrs: list[Tensor], lrs: list[Tensor], scale: int
                         ) -> dict[str, float]:
    """How close a degradation is to the hidden one on images it never saw: PSNR (RGB,
    of 255) of D(HR) and of bicubic(HR) against the hidden pipeline's LR of the same HR."""
    def mean_psnr(fn: Any) -> float:
        vals = []
        for hr, lr in zip(hrs, lrs, strict=True):
            out = fn(hr[None])[0][:, : lr.shape[1], : lr.shape[2]].clamp(0, 1)
            vals.append(float(10 * torch.log10(1 / F.mse_loss(out, lr))))
        return round(sum(vals) / len(vals), 3)
    return {"d_psnr_learned": mean_psnr(D),
            "d_psnr_bicubic": mean_psnr(lambda x: bicubic_down_torch(x, scale))}


# ------------------------------------------------------------------- stages 3-4

def upsample(lr: Tensor, scale: int) -> Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def srcnn_stage(cfg: DictConfig, name: str, net: SRCNN, images: list[Tensor],
                degrade: Any) -> Stage:
    """SRCNN on pairs (HR patch, degrade(HR patch, generator)), quantised to 8 bits.
    Data-parallel over the ranks: each draws the same global batch and trains on its
    shard; DDP averages the gradients, so any number of ranks takes the same steps."""
    s, scale = cfg.srnam.srcnn, cfg.srnam.scale
    model = distributed.wrap(net)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)

    def step(i: int) -> dict[str, float]:
        rng = step_generator(cfg.seed, name, i)
        hr = distributed.shard(random_patches(images, s.batch, s.patch, rng))
        with torch.no_grad():
            lr = quantize(degrade(hr, rng).clamp(0, 1))
        loss = F.mse_loss(model(upsample(lr, scale)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": distributed.mean(loss.item())}

    return Stage(name, s.steps, step, {"net": model, "opt": opt}, units=s.batch,
                 unit_name="patches")


# --------------------------------------------------------------------- inference

def fit_codes(G: Generator, targets: Tensor, degrade: Any, steps: int, lr: float,
              prior: float, gen: torch.Generator, k: int = 1) -> Tensor:
    """Latent codes z (k * N, z_dim) with degrade(G(z)) ~ targets (N, 3, p, p), G and the
    degradation frozen: Adam on L1 + prior * |z|^2 (SR-NAM Sec. 3.3)."""
    y = targets.repeat(k, 1, 1, 1)
    z = torch.randn(len(y), G.z_dim, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    frozen = [p for p in G.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = (degrade(G(z)) - y).abs().mean() + prior * z.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return z.detach()


def _window(size: int) -> Tensor:
    """Separable raised-cosine weights, positive everywhere, for blending patches."""
    w = torch.sin(torch.pi * (torch.arange(size) + 0.5) / size) ** 2 + 1e-3
    return torch.outer(w, w)


def super_resolve(lr: Tensor, G: Generator, degrade: Any, cfg: DictConfig,
                  gen: torch.Generator) -> list[Tensor]:
    """K HR candidates (3, h*s, w*s) for an LR image (3, h, w): codes fitted per
    overlapping LR patch, HR patches blended with a raised-cosine window."""
    inf, s = cfg.srnam.infer, cfg.srnam.scale
    p = cfg.srnam.patch // s
    h, w = lr.shape[1:]
    H = p + -(-max(h - p, 0) // inf.stride) * inf.stride  # padded so patches tile it
    W = p + -(-max(w - p, 0) // inf.stride) * inf.stride
    x = F.pad(lr[None], [0, W - w, 0, H - h], mode="replicate")
    cols = F.unfold(x, p, stride=inf.stride)  # (1, 3 p p, P)
    patches = cols[0].T.reshape(-1, 3, p, p)
    z = fit_codes(G, patches, degrade, inf.steps, inf.lr, inf.prior, gen, k=inf.k)
    with torch.no_grad():
        hr = G(z).view(inf.k, len(patches), 3, p * s, p * s)
    win = _window(p * s).reshape(1, -1).repeat(3, 1).reshape(-1)  # (3 ps ps), as unfold
    fold = lambda cols: F.fold(cols[None], (H * s, W * s), p * s, stride=inf.stride * s)  # noqa: E731
    den = fold(win[:, None].expand(-1, len(patches)))
    return [(fold((cand.reshape(len(patches), -1) * win).T) / den)[0, :, : h * s, : w * s]
            .clamp(0, 1) for cand in hr]


def back_project(hr: Tensor, lr: Tensor, degrade: Any, steps: int, scale: int) -> Tensor:
    """Iterative back-projection (Irani & Peleg 1991) of a candidate (3, H, W) onto its
    LR input (3, H/s, W/s): x <- x + up(y - degrade(x)), `steps` times, with bicubic up.
    It corrects what the degradation sees (colour and low frequencies, where the blended
    patches of G err most) and leaves the detail it cannot see, which is where the
    candidates differ; the consistency |degrade(x) - y| falls with every step."""
    with torch.no_grad():
        x, y = hr[None], lr[None]
        for _ in range(steps):
            x = (x + upsample(y - degrade(x), scale)).clamp(0, 1)
    return x[0]


# ---------------------------------------------------------------------- evaluate

def eval_sets(cfg: DictConfig) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """{set: [(HR, provided bicubic LR)]} at the configured scale."""
    out = {}
    s = cfg.srnam.scale
    for name in cfg.srnam.eval.sets:
        folder = Path(cfg.data.sets) / name / f"x{s}"
        hrs = sorted(folder.glob(f"*_SRF_{s}_HR.png"))
        if not hrs:
            raise UsageError(f"no *_SRF_{s}_HR.png images in {folder}")
        n = cfg.srnam.eval.max_images or len(hrs)
        try:
            out[name] = [(load_rgb(p), load_rgb(Path(str(p).replace("_HR.png", "_LR.png"))))
                         for p in hrs[:n]]
        except ImageError as e:
            raise UsageError(str(e)) from None
    return out


def evaluate(cfg: DictConfig, run: RunDir, G: Generator, D: DegradationNet,
             cnns: dict[str, SRCNN], stop: StopFlag | None = None) -> dict[str, Any]:
    """Every method on every set and LR kind; returns {set/kind/method/metric: value}.
    Ctrl-C / SIGTERM stops it between images (the run ends `interrupted`)."""
    s, border = cfg.srnam.scale, cfg.srnam.scale
    G.eval()
    D.eval()
    camera = hidden(cfg, cfg.srnam.hidden.eval_seed)
    bicubic_d = lambda x: bicubic_down_torch(x, s)  # noqa: E731
    final: dict[str, Any] = {}
    grid_rows: list[list[Tensor]] = []
    for set_name, pairs in eval_sets(cfg).items():
        for kind in ("bicubic", "realistic"):
            sums: dict[str, list[float]] = {}
            for i, (hr, given_lr) in enumerate(pairs):
                if stop:
                    raise Interrupted
                lr = given_lr if kind == "bicubic" else camera(hr, 20_000 + i)
                gen = torch.Generator().manual_seed(cfg.seed * 31 + i)
                t = time.perf_counter()
                rows = _score_image(cfg, hr, lr, G, D, bicubic_d, cnns, gen, border)
                log.info("%s %s image %d/%d: %.0f s (SR-NAM learned D %.2f dB best of %d)",
                         set_name, kind, i + 1, len(pairs), time.perf_counter() - t,
                         rows["srnam_learned_psnr"], cfg.srnam.infer.k)
                for key, v in rows.items():
                    sums.setdefault(key, []).append(v)
                if kind == "realistic" and i < cfg.srnam.eval.grid_images and \
                        set_name == cfg.srnam.eval.sets[0]:
                    grid_rows.append(_grid_row(cfg, hr, lr, G, D, gen))
            for key, vals in sums.items():
                final[f"{set_name}/{kind}/{key}"] = round(sum(vals) / len(vals), 4)
            log.info("%s %s: %s", set_name, kind, {k: final[f"{set_name}/{kind}/{k}"]
                                                   for k in sums if k.endswith("psnr")})
    if grid_rows:
        save_grid(torch.cat(grid_rows), run.path / "srnam_grid.png", cols=len(grid_rows[0]))
    return final


def _score_image(cfg: DictConfig, hr: Tensor, lr: Tensor, G: Generator, D: DegradationNet,
                 bicubic_d: Any, cnns: dict[str, SRCNN], gen: torch.Generator,
                 border: int) -> dict[str, float]:
    s = cfg.srnam.scale
    out: dict[str, float] = {}
    size = (lr.shape[1] * s, lr.shape[2] * s)
    hr = hr[:, : size[0], : size[1]]
    t = time.perf_counter()
    bic = quantize(resize(lr, size))
    out.update(bicubic_psnr=psnr(bic, hr, border), bicubic_ssim=ssim(bic, hr, border),
               bicubic_sec=time.perf_counter() - t)
    for name, net in cnns.items():
        t = time.perf_counter()
        with torch.no_grad():
            sr = quantize(net(upsample(lr[None], s))[0].clamp(0, 1))
        out.update({f"{name}_psnr": psnr(sr, hr, border), f"{name}_ssim": ssim(sr, hr, border),
                    f"{name}_sec": time.perf_counter() - t})
    for name, degrade in (("srnam_learned", D), ("srnam_bicubic", bicubic_d)):
        t = time.perf_counter()
        cands = super_resolve(lr, G, degrade, cfg, gen)
        sec = time.perf_counter() - t
        variants = [(name, cands, sec)]
        if steps := cfg.srnam.infer.back_project:  # the same candidates, made consistent
            t = time.perf_counter()
            bp = [back_project(c, lr, degrade, steps, s) for c in cands]
            variants.append((f"{name}_bp", bp, sec + time.perf_counter() - t))
        for key, xs, secs in variants:
            m = one_to_many(xs, hr, lr, degrade, border)
            out.update({f"{key}_psnr": m.pop("psnr_best"), f"{key}_ssim": m.pop("ssim_best"),
                        **{f"{key}_{k}": v for k, v in m.items()}, f"{key}_sec": secs})
    return out


def _grid_row(cfg: DictConfig, hr: Tensor, lr: Tensor, G: Generator, D: DegradationNet,
              gen: torch.Generator) -> Tensor:
    """One row of the figure, on a central crop: LR (nearest), bicubic, the K learned-D
    candidates, the same K back-projected onto the LR (when `infer.back_project` > 0), HR."""
    s, c = cfg.srnam.scale, cfg.srnam.eval.grid_crop
    h, w = lr.shape[1:]
    top, left = max(0, (h - c // s) // 2), max(0, (w - c // s) // 2)
    lr_c = lr[:, top:top + c // s, left:left + c // s]
    hr_c = hr[:, top * s:top * s + c, left * s:left * s + c]
    near = F.interpolate(lr_c[None], scale_factor=s, mode="nearest")[0]
    bic = resize(lr_c, hr_c.shape[1:])
    cands = super_resolve(lr_c, G, D, cfg, gen)
    if steps := cfg.srnam.infer.back_project:
        cands += [back_project(c, lr_c, D, steps, s) for c in cands]
    return torch.stack([near, bic, *cands, hr_c])


def save_grid(images: Tensor, path: Path, cols: int) -> None:
    """(N, 3, h, w) -> one image, `cols` per row, 2-pixel white gaps."""
    n, _, h, w = images.shape
    rows = -(-n // cols)
    canvas = torch.ones(3, rows * (h + 2), cols * (w + 2))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[:, r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = img
    save_rgb(canvas, path)


# ------------------------------------------------------------------------ recipe

def check_degradation_checkpoint(cfg: DictConfig, ckpt_dir: Path) -> None:
    """A D to be loaded (reused from `srnam.init_from`, or resumed) must be of the kernel
    kind configured (a UsageError naming the key if not); one learned under another camera
    is loaded with a warning, since its figures then measure a mismatched D."""
    for name in ("degradation.pt", "degradation_last.pt"):
        if not (path := ckpt_dir / name).exists():
            continue
        saved = torch.load(path, weights_only=True).get("config", {}).get("srnam", {})
        kind = saved.get("degradation", {}).get("kernel", "free")  # before the option: free
        if kind != cfg.srnam.degradation.kernel:
            raise UsageError(f"the degradation checkpoint {path} has a {kind} blur kernel; "
                             f"pass srnam.degradation.kernel={kind} to use it, or retrain D "
                             "(srnam.stages=[degradation,...])")
        if (camera := saved.get("hidden", {}).get("sigma")) != list(cfg.srnam.hidden.sigma):
            log.warning("the degradation checkpoint %s was learned under a camera of blur "
                        "sigmas %s, not the %s configured", path, camera,
                        list(cfg.srnam.hidden.sigma))

def check_config(cfg: DictConfig) -> None:
    """The srnam settings that the domain table (conf/checks/srnam.yaml) cannot check
    (UsageError, before any work)."""
    sr = cfg.srnam
    unknown = [s for s in sr.stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown SR-NAM stage(s) {unknown}; stages: {', '.join(STAGES)}")


def reuse_stages(cfg: DictConfig, run_dir: RunDir) -> None:
    """Copy `srnam.init_from`'s finished stages into this run, except the selected ones and
    those built on a retrained model (STAGES is in order); the summary names them."""
    retrain = set(cfg.srnam.stages)
    for st in STAGES:
        if any(dep in retrain for dep, users in USERS.items() if st in users):
            retrain.add(st)
    reused = []
    for st in STAGES:
        src = Path(cfg.srnam.init_from) / "checkpoints" / f"{st}.pt"
        dst = run_dir.ckpt_dir / f"{st}.pt"
        if st not in retrain and src.exists():
            reused.append(st)
            if not dst.exists():
                shutil.copyfile(src, dst)
    run_dir.update(reused_stages=reused)  # for the report


def learn_degradation(cfg: DictConfig, G: Generator, D: DegradationNet,
                      g_images: list[Tensor], camera_images: list[Tensor], run_dir: RunDir,
                      stop: StopFlag) -> dict[str, Any]:
    """Stage 2: D's noise level estimated blind on the camera's photos, then D learned
    NAM-style from their LR patches."""
    sr = cfg.srnam
    photos = camera_photos(cfg, camera_images)
    noise = sr.degradation.noise_std  # of 255; null: blind estimate on the photos
    if noise is None:
        noise = 255 * float(torch.tensor([noise_level(p) for p in photos]).median())
    D.noise_std.fill_(noise / 255)
    lr_patches = realistic_patches(cfg, photos, sr.degradation.patches)
    return run_stage(degradation_stage(cfg, G, D, lr_patches, g_images[: sr.eval.d_images]),
                     cfg, run_dir, stop)


def run(cfg: DictConfig, run_dir: RunDir, stop: StopFlag) -> dict[str, Any]:
    """The `srnam` recipe: the selected stages in order; returns the evaluation."""
    check_config(cfg)
    sr = cfg.srnam
    if sr.init_from:  # another run's finished stages are reused, except the selected ones
        reuse_stages(cfg, run_dir)
    g_images, camera_images = t91(cfg)
    G = Generator(sr.z_dim, sr.patch, sr.width)
    check_degradation_checkpoint(cfg, run_dir.ckpt_dir)
    D = DegradationNet(sr.scale, residual=sr.degradation.residual,
                       sigma=sr.degradation.init_sigma, kernel=sr.degradation.kernel)
    cnns = {"srcnn_bicubic": SRCNN(), "srcnn_learned": SRCNN()}
    results: dict[str, Any] = {}

    def need(stage: str) -> bool:
        """A stage runs (or is loaded) if selected or if a needed stage uses its model."""
        return stage in sr.stages or any(need(user) for user in USERS.get(stage, ()))

    if need("generator"):
        results["generator"] = run_stage(generator_stage(cfg, run_dir, G, g_images),
                                         cfg, run_dir, stop)
    if need("degradation"):
        results["degradation"] = learn_degradation(cfg, G, D, g_images, camera_images,
                                                   run_dir, stop)
    for name, degrade in (("srcnn_bicubic", lambda x, _: bicubic_down_torch(x, sr.scale)),
                          ("srcnn_learned", D.sample)):
        if need(name):
            D.eval()
            results[name] = run_stage(srcnn_stage(cfg, name, cnns[name], g_images, degrade),
                                      cfg, run_dir, stop)
    final = {f"{k}/{m}": v for k, r in results.items() for m, v in r.items()}
    if "evaluate" in sr.stages and distributed.WORLD.master:
        final.update(evaluate(cfg, run_dir, G, D, cnns, stop))
    return final
