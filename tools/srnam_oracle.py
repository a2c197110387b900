"""Probe for issue 7: SR-NAM fitted through the hidden camera's OWN per-image blur and
sampling (noise and JPEG not modelled) against the bicubic D, on the camera's realistic LR.

No single learned blur can fit a camera image better than that image's own kernel, so the
oracle row bounds what any learned D can give SR-NAM with a given G. Not a tdx stage: it
reads a finished run folder with `generator` (and its config) and prints per-image and
per-set best-of-K PSNR, raw and after the configured back-projection steps.

    TDX_DATA_DIR=... python tools/srnam_oracle.py RUN_DIR N_IMAGES [LATENT_STEPS]
"""

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tdx.superres import srnam
from tdx.superres.images import bicubic_down_torch, conv_same, quantize, resize
from tdx.superres.metrics import psnr
from tdx.superres.nets import Generator

run, n = Path(sys.argv[1]), int(sys.argv[2])
cfg = OmegaConf.load(run / "config.yaml")
cfg.srnam.infer.steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
sr, s = cfg.srnam, cfg.srnam.scale
G = Generator(sr.z_dim, sr.patch, sr.width)
G.load_state_dict(torch.load(run / "checkpoints/generator.pt", weights_only=True)["state"]["G"])
G.eval()
camera = srnam.hidden(cfg, sr.hidden.eval_seed)


def oracle(index: int):
    """The camera's blur and sampling for image `index` (images.Degradation.__call__)."""
    k = camera.blur_kernel(index)

    def degrade(x):  # (N, 3, H, W) -> (N, 3, H/s, W/s), only the taken pixels computed
        return conv_same(x, k, s, s // 2)[..., : x.shape[-2] // s, : x.shape[-1] // s]
    return degrade


res, sets = {}, srnam.eval_sets(cfg)
for set_name, pairs in sets.items():
    for i, (hr, _) in enumerate(pairs[:n]):
        lr = camera(hr, 20_000 + i)  # the index evaluate() uses
        size = (lr.shape[1] * s, lr.shape[2] * s)
        hr = hr[:, : size[0], : size[1]]
        row = {"bicubic": psnr(quantize(resize(lr, size)), hr, s)}
        for name, deg in (("bicubicD", lambda x: bicubic_down_torch(x, s)),
                          ("oracle", oracle(20_000 + i))):
            gen = torch.Generator().manual_seed(cfg.seed * 31 + i)
            t = time.time()
            cands = srnam.super_resolve(lr, G, deg, cfg, gen)
            row[name] = max(psnr(quantize(c), hr, s) for c in cands)
            bp = [srnam.back_project(c, lr, deg, sr.infer.back_project, s) for c in cands]
            row[name + "_bp"] = max(psnr(quantize(c), hr, s) for c in bp)
            print(set_name, i, name, f"{time.time() - t:.0f}s", flush=True)
        res[f"{set_name}/{i}"] = row
        print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
for set_name in sets:
    rows = [r for k, r in res.items() if k.startswith(set_name + "/")]
    print(set_name, {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in rows[0]})
