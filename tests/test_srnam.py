"""SR-NAM (issue: super-resolution by non-adversarial mapping): metrics against known
values, the networks' shapes, latent fitting, every stage for two updates, bad images,
and Ctrl-C/resume of the plain-PyTorch engine."""

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tdx.report import report
from tdx.run import RunDir
from tdx.superres.images import (
    Degradation,
    ImageError,
    bicubic_down_torch,
    gaussian_kernel,
    load_rgb,
    noise_level,
    resize,
)
from tdx.superres.metrics import psnr, ssim
from tdx.superres.nets import Degradation as DegradationNet
from tdx.superres.nets import Generator
from tdx.superres.srnam import (
    back_project,
    contrast_l1,
    fit_codes,
    kernel_spread,
    laplacian_l1,
)

from .conftest import TDX, assert_events_mirror_metrics, only_run, summary, tdx, wait_for_lines

SR = Path(os.environ["TDX_DATA_DIR"]) / "sr"
FAST = ["srnam.generator.steps=2", "srnam.generator.bank=64", "srnam.degradation.steps=2",
        "srnam.degradation.patches=64",
        "srnam.srcnn.steps=2", "srnam.infer.steps=2", "srnam.infer.k=2",
        "srnam.eval.sets=[Set5]", "srnam.eval.max_images=1", "srnam.eval.grid_images=1",
        "srnam.eval.d_images=2", "trainer.log_every=1", "trainer.valid_every=2",
        "trainer.save_every=1"]


def test_psnr_and_ssim_on_known_values():
    torch.manual_seed(0)
    hr = (torch.rand(3, 40, 40) * 200 + 20).round() / 255
    assert psnr(hr, hr) == math.inf and ssim(hr, hr) == pytest.approx(1.0)
    shifted = hr + 10 / 255  # Y moves by (65.481 + 128.553 + 24.966) * 10 / 255 everywhere
    assert psnr(shifted, hr) == pytest.approx(20 * math.log10(255 / (219 * 10 / 255)))
    # a uniform shift keeps the structure but lowers SSIM's luminance term only slightly
    assert 0.95 < ssim(shifted, hr) < 1.0
    assert ssim(torch.rand(3, 40, 40), hr) < 0.2


def test_bicubic_x4_matches_the_published_figures():
    """Set5 28.42 dB / 0.8104, Set14 26.00 dB / 0.7027 (bicubic x4, Y, border 4)."""
    for name, ref_psnr, ref_ssim in (("Set5", 28.42, 0.8104), ("Set14", 26.00, 0.7027)):
        ps, ss = [], []
        for hr_path in sorted((SR / name / "x4").glob("*_HR.png")):
            hr, lr = load_rgb(hr_path), load_rgb(Path(str(hr_path).replace("_HR", "_LR")))
            sr = resize(lr, hr.shape[1:])
            ps.append(psnr(sr, hr))
            ss.append(ssim(sr, hr))
        assert abs(sum(ps) / len(ps) - ref_psnr) < 0.1, (name, sum(ps) / len(ps))
        assert abs(sum(ss) / len(ss) - ref_ssim) < 0.003, (name, sum(ss) / len(ss))


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("kernel", ["gaussian", "free"])
def test_degradation_net_shapes(scale, kernel):
    for D in (DegradationNet(scale, kernel=kernel),
              DegradationNet(scale, residual=True, kernel=kernel)):
        assert D(torch.rand(2, 3, 12 * scale, 10 * scale)).shape == (2, 3, 12, 10)
        assert D(torch.rand(1, 3, 12 * scale + 1, 10 * scale)).shape == (1, 3, 12, 10)
        # a normalised blur: a constant image stays constant, whatever the kernel's parameters
        with torch.no_grad():
            for name, p in D.named_parameters():
                if not name.startswith("residual"):
                    p.add_(0.3 * torch.randn_like(p))
        torch.testing.assert_close(D(torch.full((1, 3, 8 * scale, 8 * scale), 0.3)),
                                   torch.full((1, 3, 8, 8), 0.3))
        k = D.blur_kernel().detach()
        assert (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-5


def test_blind_noise_level_and_noisy_samples_of_d():
    """The estimate finds the std of white noise on a smooth image, and more of it on a
    noisier one; D's forward is the noise-free mean, `sample` adds noise of its level."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, 96).expand(3, 96, 96)
    for std in (0.01, 0.03):
        noisy = ramp + std * torch.randn(3, 96, 96, generator=g)
        assert noise_level(noisy) == pytest.approx(std, rel=0.1)
    D = DegradationNet(4, kernel="free")  # the kind of D saved before noise_std existed
    D.noise_std.fill_(0.02)
    hr = torch.rand(2, 3, 64, 64, generator=g)
    draw = D.sample(hr, torch.Generator().manual_seed(1))
    assert float((draw - D(hr)).detach().std()) == pytest.approx(0.02, rel=0.1)
    torch.testing.assert_close(draw, D.sample(hr, torch.Generator().manual_seed(1)))
    # the level is saved with D; a checkpoint from before it existed loads as noise-free
    state = D.state_dict()
    assert float(state.pop("noise_std")) == pytest.approx(0.02)
    old = DegradationNet(4, kernel="free")
    old.noise_std.fill_(0.5)
    old.load_state_dict(state)
    assert float(old.noise_std) == 0.0


def test_hidden_degradation_is_repeatable_and_x4():
    hr = torch.rand(3, 64, 48)
    cam = Degradation(seed=3)
    a, b = cam(hr, 7), cam(hr, 7)
    assert a.shape == (3, 16, 12) and torch.equal(a, b)
    assert not torch.equal(a, cam(hr, 8))


def test_hidden_degradation_is_aligned_with_the_bicubic_lr():
    """On a ramp, the camera's LR (noise off, mean over random blurs) matches bicubic
    down-scaling: its pixels are centred where the provided LR's are. Half an HR pixel
    off would differ by half the slope, 1.6 of 255 here."""
    ramp = torch.linspace(0.1, 0.9, 64)
    cam = Degradation(noise=(0.0, 0.0), jpeg=(95, 95))
    for img in (ramp.expand(3, 64, 64), ramp[:, None].expand(3, 64, 64)):
        lr = torch.stack([cam(img.contiguous(), i) for i in range(8)]).mean(0)
        ref = bicubic_down_torch(img[None], 4)[0]
        assert abs(float((lr - ref)[:, 2:-2, 2:-2].mean())) < 0.3 / 255


def test_latent_fitting_lowers_the_consistency_error():
    torch.manual_seed(0)
    G = Generator(z_dim=16, size=16, width=8).eval()
    with torch.no_grad():
        target = bicubic_down_torch(G(torch.randn(6, 16)), 4)  # reachable LR patches
    degrade = lambda x: bicubic_down_torch(x, 4)  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    z0 = fit_codes(G, target, degrade, steps=0, lr=0.05, prior=0.0, gen=gen)
    z = fit_codes(G, target, degrade, steps=60, lr=0.05, prior=0.0,
                  gen=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = (degrade(G(z0)) - target).abs().mean()
        after = (degrade(G(z)) - target).abs().mean()
    assert after < 0.5 * before
    assert all(p.requires_grad for p in G.parameters())  # G's flags are given back


def test_back_projection_makes_candidates_consistent_and_keeps_their_detail():
    """Two candidates of one LR image, each off in colour (what the LR shows) and with its
    own fine texture (what it cannot show): back-projection removes the colour error and
    keeps the candidates apart."""
    torch.manual_seed(0)
    hr = F.interpolate(torch.rand(1, 3, 8, 8), size=64, mode="bicubic").clamp(0, 1)[0]
    degrade = lambda x: bicubic_down_torch(x, 4)  # noqa: E731
    lr = degrade(hr[None])[0]
    texture = lambda: 0.05 * torch.randn(3, 64, 64)  # noqa: E731
    cands = [(hr + 0.15 * torch.tensor([1.0, -1.0, 0.5])[:, None, None] + texture()).clamp(0, 1)
             for _ in range(2)]
    after = [back_project(c, lr, degrade, steps=20, scale=4) for c in cands]
    error = lambda x: float((degrade(x[None])[0] - lr).abs().mean())  # noqa: E731
    for c, a in zip(cands, after, strict=True):
        assert error(a) < 0.1 * error(c)
        assert (a - hr).mean((1, 2)).abs().max() < 0.1 * (c - hr).mean((1, 2)).abs().max()
        assert psnr(a, hr) > psnr(c, hr) + 3
    assert (after[0] - after[1]).abs().mean() > 0.5 * (cands[0] - cands[1]).abs().mean()
    assert torch.equal(back_project(cands[0], lr, degrade, steps=0, scale=4), cands[0])


def test_contrast_term_does_not_reward_a_blurrier_output():
    """With an output that cannot match its target (independent textures of the same
    statistics), the pixel distances prefer a blurred output; the band-contrast term
    prefers the one as sharp as the target."""
    torch.manual_seed(0)
    a, b = torch.rand(64, 3, 8, 8), torch.rand(64, 3, 8, 8)
    blurred = F.avg_pool2d(F.pad(a, [1, 1, 1, 1], mode="replicate"), 3, stride=1)
    assert laplacian_l1(blurred, b) < laplacian_l1(a, b)
    assert contrast_l1(blurred, b) > contrast_l1(a, b)
    assert float(contrast_l1(b, b)) == 0.0


def test_kernel_spread_of_a_gaussian():
    r = torch.arange(17.0) - 8
    for sigma in (1.0, 2.0):
        g = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * sigma**2))
        assert kernel_spread(g) == pytest.approx(sigma, abs=0.01)
    # both kinds of learned D start as the same Gaussian, of sigma scale / 2
    free, gauss = (DegradationNet(4, kernel=k).blur_kernel().detach() for k in ("free", "gaussian"))
    assert kernel_spread(free) == pytest.approx(2.0, abs=0.05)
    torch.testing.assert_close(gauss, free)


def test_gaussian_kernel_of_d_is_the_gaussian_of_its_parameters():
    """D's Gaussian kernel is N(centre, L L^T) on its grid: set to sigmas (1.5, 2.5) rotated by
    0.4 rad and moved by 0.5 px down and right, it equals the camera's kernel
    (images.gaussian_kernel) of those parameters."""
    D = DegradationNet(4, sigma=2.0)
    theta, sx, sy = 0.4, 1.5, 2.5
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov_xy = rot @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ rot.T
    L = torch.linalg.cholesky(cov_xy.flip(0, 1))  # (x, y) -> D's (y, x) order
    with torch.no_grad():
        D.log_diag.copy_(L.diagonal().log().float())
        D.off_diag.fill_(float(L[1, 0]))
        D.centre.fill_(0.5)
    ref = gaussian_kernel(sx, sy, theta, size=16, shift=-0.5)
    torch.testing.assert_close(D.blur_kernel().detach(), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gaussian or free"):
        DegradationNet(4, kernel="box")


def test_every_stage_runs_two_updates(tmp_path, smoke_tables):
    """The smoke build of the srnam table (conf/table/srnam.yaml: these FAST settings)
    trains every stage; later runs reuse its stages or retrain the selected ones."""
    proc = smoke_tables.build("srnam")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = smoke_tables.runs("srnam")
    s = summary(run)
    assert s["status"] == "completed"
    for st in ("generator", "degradation", "srcnn_bicubic", "srcnn_learned"):
        assert (run / "checkpoints" / f"{st}.pt").exists()
        assert torch.load(run / "checkpoints" / f"{st}.pt", weights_only=True)["config"]
    f = s["final"]
    for kind in ("bicubic", "realistic"):
        for m in ("bicubic", "srcnn_bicubic", "srcnn_learned", "srnam_learned",
                  "srnam_bicubic", "srnam_learned_bp", "srnam_bicubic_bp"):
            assert f"Set5/{kind}/{m}_psnr" in f and f"Set5/{kind}/{m}_sec" in f
        assert f[f"Set5/{kind}/srnam_learned_diversity"] > 0
        for d in ("learned", "bicubic"):  # back-projected candidates: more consistent
            assert f[f"Set5/{kind}/srnam_{d}_bp_consistency"] < \
                f[f"Set5/{kind}/srnam_{d}_consistency"]
    assert list((run / "samples").glob("*.png"))
    # one grid row: LR, bicubic, k=2 candidates, the 2 back-projected, HR; 96-px crops
    assert load_rgb(run / "srnam_grid.png").shape == (3, 96 + 2, 7 * (96 + 2))
    assert 0 < f["degradation/noise_std"] < 255 and f["degradation/camera_noise_std"] > 0
    # a selected stage is trained again (an ablation of D on the same G); the stages it
    # does not build on are reused, not trained again
    proc = tdx("train", "srnam", *FAST, "srnam.stages=[degradation]", f"srnam.init_from={run}",
               "srnam.degradation.init_sigma=3.0", "paths.runs_dir=ablate", cwd=tmp_path,
               timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "stage generator: already trained" in out
    assert "stage degradation: already trained" not in out
    again = summary(only_run(tmp_path / "ablate"))
    assert again["reused_stages"] == ["generator", "srcnn_bicubic"]  # not built on D
    assert again["final"]["degradation/d_psnr_start"] != f["degradation/d_psnr_start"]
    # a D of the other kernel kind is not loaded in place of this one: exit 2, naming the key
    proc = tdx("train", "srnam", *FAST, "srnam.stages=[evaluate]", f"srnam.init_from={run}",
               "srnam.degradation.kernel=free", "paths.runs_dir=other", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "has a gaussian blur kernel" in out, out[-3000:]
    assert "srnam.degradation.kernel=gaussian" in out and "Traceback" not in out


@pytest.mark.parametrize("override, message", [
    ("srnam.degradation.kernel=box", "it must be one of gaussian, free"),
    ("srnam.degradation.init_sigma=-1.0", "it must be a number > 0, or null"),
    ("srnam.stages=[nosuch]", "unknown SR-NAM stage(s) ['nosuch']")])
def test_bad_degradation_settings_are_usage_errors(tmp_path, override, message):
    proc = tdx("train", "srnam", *FAST, override, "paths.runs_dir=runs", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out and "Traceback" not in out, out[-2000:]


def _t91_with(tmp_path: Path, name: str, write) -> Path:  # noqa: ANN001
    folder = tmp_path / "t91"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "a.bmp")
    write(folder / name)
    return folder


@pytest.mark.parametrize("name,write,message", [
    ("small.png", lambda p: Image.new("RGB", (20, 20)).save(p), "smaller than"),
    ("cmyk.png", lambda p: Image.new("RGBA", (64, 64)).save(p), "not an 8-bit RGB"),
    ("broken.png", lambda p: p.write_bytes(b"not a png"), "cannot read image"),
])
def test_bad_images_are_usage_errors(tmp_path, name, write, message):
    folder = _t91_with(tmp_path, name, write)
    with pytest.raises(ImageError, match=message):
        load_rgb(folder / name, min_size=48)
    proc = tdx("train", "srnam", *FAST, f"data.t91={folder}", "srnam.g_split=1",
               "paths.runs_dir=runs", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    # unreadable: found by the data check before any folder is made; the others by SR-NAM
    said = "is not a readable image" if name == "broken.png" else message
    assert proc.returncode == 2 and said in out and str(folder / name) in out, out[-2000:]
    assert "Traceback" not in out
    assert name == "broken.png" or (tmp_path / "runs").exists()
    assert name != "broken.png" or not (tmp_path / "runs").exists()


def test_loop_engine_sigterm_then_resume(tmp_path):
    slow = ["srnam.stages=[srcnn_bicubic]", "srnam.srcnn.steps=150", "srnam.srcnn.batch=4",
            "srnam.srcnn.patch=24", "trainer.log_every=5", "trainer.save_every=1000",
            "trainer.valid_every=1000"]
    tdx("train", "srnam", *slow, "paths.runs_dir=ref", cwd=tmp_path, check=True)
    proc = subprocess.Popen([TDX, "train", "srnam", *slow, "paths.runs_dir=cut"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_lines(tmp_path / "cut", 6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    run = only_run(tmp_path / "cut")
    assert summary(run)["status"] == "interrupted"
    assert (run / "checkpoints" / "srcnn_bicubic_last.pt").exists()
    res = tdx("train", "srnam", f"resume={run}", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert summary(run)["status"] == "completed"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(5, 151, 5))  # none lost or repeated
    ref = (only_run(tmp_path / "ref") / "metrics.jsonl").read_text()
    assert (run / "metrics.jsonl").read_text() == ref  # the same trajectory
    assert_events_mirror_metrics(run)  # TensorBoard's copy was cut back with it


def test_evaluation_stops_between_images_on_a_signal(tmp_path):
    """A stop (Ctrl-C / SIGTERM) during the long evaluation is honoured at the next image,
    not only when every set is done."""
    from tdx.config import compose
    from tdx.errors import Interrupted
    from tdx.run import RunDir, StopFlag
    from tdx.superres.nets import SRCNN, Generator
    from tdx.superres.srnam import evaluate

    cfg = compose("srnam", [*FAST, f"paths.data_dir={os.environ['TDX_DATA_DIR']}"])
    stop = StopFlag()
    stop.signum = signal.SIGTERM
    with pytest.raises(Interrupted):
        evaluate(cfg, RunDir(tmp_path / "run"), Generator(cfg.srnam.z_dim, cfg.srnam.patch,
                 cfg.srnam.width), DegradationNet(4), {"srcnn_bicubic": SRCNN(),
                                                      "srcnn_learned": SRCNN()}, stop)


# ---------------------------------------------------------------------------- report


def test_srnam_table_states_settings_and_model_source(tmp_path, monkeypatch):
    """The SR-NAM table: a row per method, and the notes say which images and inference
    settings were used and where the trained models came from."""
    monkeypatch.chdir(tmp_path)
    src = RunDir(tmp_path / "trained")
    src.start(1, "srnam")
    src.finish("completed")
    run = RunDir(tmp_path / "eval")
    run.write_config({"name": "srnam", "seed": 1, "srnam": {
        "scale": 4, "init_from": "trained", "infer": {"k": 4, "steps": 20, "stride": 6},
        "eval": {"max_images": 5}}}, ["experiment=srnam"])
    run.start(1, "srnam")
    final = {f"Set5/{kind}/{m}_{x}": 20.0 for kind in ("bicubic", "realistic")
             for m in ("bicubic", "srnam_learned") for x in ("psnr", "ssim", "sec")}
    run.finish("completed", final=final, reused_stages=["generator"])
    out = tmp_path / "srnam.md"
    report([run.path], preset="srnam", out=out)
    text = out.read_text()
    assert "| SR-NAM, learned D | 20.00 / 20.0000 | 20.00 / 20.0000 |" in text
    assert "CNN" not in text and "back-projection" not in text  # methods the run lacks
    assert "the first 5 images of each set, x4, K=4 candidates, 20 latent steps" in text
    commit = json.loads((src.path / "summary.json").read_text())["git_commit"]
    assert (f"Stage(s) generator loaded from `trained` (trained at commit {commit}); the "
            "others trained in this run.") in text


def test_srnam_targets_from_hand_numbers():
    from tdx.superres.report import srnam_targets

    f = {"degradation/d_psnr_learned": 31.5, "degradation/d_psnr_bicubic": 27.4}
    for s, (learned, bicubic, cnn) in {"Set5": (23.0, 22.0, 0.1),
                                       "Set14": (21.3, 21.0, -0.2)}.items():
        f |= {f"{s}/realistic/bicubic_psnr": 25.0,
              f"{s}/realistic/srnam_learned_psnr": learned,
              f"{s}/realistic/srnam_bicubic_psnr": bicubic,
              f"{s}/realistic/srcnn_bicubic_psnr": 26.0,
              f"{s}/realistic/srcnn_learned_psnr": 26.0 + cnn,
              f"{s}/realistic/srnam_learned_diversity": 4.0,
              f"{s}/realistic/srnam_learned_consistency": 1.5}
    lines = srnam_targets(f)
    assert lines == [
        "Targets (realistic LR):",
        "SR-NAM, learned D - bicubic D >= +0.5 dB (best of K) on every set: MISSED "
        "(Set5 +1.00, Set14 +0.30)",
        "CNN on learned-D pairs above the bicubic-pairs CNN: MISSED (Set5 +0.10 dB, "
        "Set14 -0.20 dB)",
        "Learned D closer to the hidden camera than bicubic (PSNR of its LR against the "
        "camera's on unseen images): met (31.5 vs 27.4 dB)",
        "SR-NAM, learned D, diversity > 0: met (Set5 4.00, Set14 4.00 of 255); consistency "
        "|D(candidate) - LR| (reported): Set5 1.50, Set14 1.50"]
    f["Set14/realistic/srnam_learned_psnr"] = 21.6
    assert "on every set: met (Set5 +1.00, Set14 +0.60)" in srnam_targets(f)[1]
    # back-projection rows are judged on their own; a set without a figure is not a pass
    f |= {"Set5/realistic/srnam_learned_bp_psnr": 26.0,
          "Set5/realistic/srnam_bicubic_bp_psnr": 25.0}
    assert srnam_targets(f)[2] == ("SR-NAM + back-projection, learned D - bicubic D >= +0.5 dB "
                                   "(best of K) on every set: MISSED (Set5 +1.00; not run: Set14)")
    del f["Set14/realistic/srnam_learned_consistency"]
    assert srnam_targets(f)[-1].endswith("(Set5 4.00, Set14 4.00 of 255); consistency "
                                         "|D(candidate) - LR| (reported): Set5 1.50")
    assert srnam_targets({}) == ["Targets (realistic LR): not evaluated"]
