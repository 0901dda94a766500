"""VAE: the explicit gradient of the energy against autograd, the unrolled projection in the graph
against the eager autograd iteration, the map and the MMD head, non-finite detection, bad options."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from adrt.errors import AdrtError  # noqa: E402
from adrt.train.generative.heads import guard_finite, kernel  # noqa: E402
from adrt.train.vae import VAEConfig, VAEScorer, energy, kl_divergence  # noqa: E402

from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import one_thread  # noqa: E402,F401


def _scorer(**kw) -> VAEScorer:
    torch.manual_seed(0)
    s = VAEScorer(VAEConfig(channels=(4, 8, 8), latent_dim=3, **kw)).eval()
    with torch.no_grad():           # non-trivial biases so every term of the backward pass matters
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return s


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_explicit_gradient_equals_autograd(beta):
    net = _scorer().net
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 24, generator=g) * 2 - 1
    xg = x.clone().requires_grad_(True)
    f, mu, logvar = net(xg)
    loss = ((xg - f) ** 2).flatten(1).sum(1) + beta * kl_divergence(mu, logvar)
    (ref,) = torch.autograd.grad(loss.sum(), xg)
    with torch.no_grad():
        f2, got = net.loss_grad(x, beta)
    assert torch.allclose(f2, f.detach(), atol=1e-6)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("weight", ["abs", "sq", "none"])
def test_explicit_projection_equals_the_autograd_iteration(weight):
    s = _scorer(k_steps=4, step_size=0.05, lam=0.3, grad_weight=weight, beta=1.0)
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        got = s.project(x0)
    ref = s.project_autograd(x0)
    assert float((got - x0).abs().mean()) > 1e-3                 # it moved
    assert torch.allclose(got, ref, atol=1e-5)
    # Each step lowers the energy it descends on (small step).
    with torch.no_grad():
        e = [float(energy(s.net, s.project(x0, k), x0, 1.0, 0.3).sum()) for k in range(4)]
    assert all(b < a for a, b in zip(e, e[1:]))


def test_graph_unrolls_k_explicit_steps_and_matches_the_eager_autograd_projection(runs, synth_data):
    """The bundle's raw map is |x0 − x_K| of the autograd iteration (upsampled + blurred) within 1e-4."""
    import onnx
    import torch.nn.functional as F

    from adrt.data import Dataset, load_images
    from adrt.train.fit import load_run

    run, bundle = runs("vae")
    det, meta = load_run(run)
    k = meta["config"]["k_steps"]
    assert k >= 1
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["k_steps"] == k and manifest["config"]["step_size"] == det.scorer.cfg.step_size
    ops = [n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node]
    # Per step: 5 transposed convs in the decoder + 2 (1×1 head and input, backward) + 5 (encoder backward).
    n_levels = len(det.scorer.cfg.channels)
    assert ops.count("ConvTranspose") == k * (2 * n_levels + 2)
    ds = Dataset.open(synth_data)
    x = load_images([s.path for s in ds.test][-3:], SIZE, SIZE)
    got = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    x0 = det.preprocess(torch.from_numpy(x))
    xk = det.scorer.project_autograd(x0)
    with torch.no_grad():
        amap = (x0 - xk).abs().sum(1)
        ref = det.blur(F.interpolate(amap.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear").squeeze(1))
    assert np.abs(got[2] - ref.numpy()).max() <= 1e-4 * float(ref.abs().max())


def test_projection_moves_defect_pixels_more_than_normal_ones(runs, synth_data):
    from adrt.data import Dataset, load_images, load_masks
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, _ = runs("vae")
    det, _ = load_run(run)
    ds = Dataset.open(synth_data)
    bad = [s for s in ds.test if s.label == 1]
    x0 = det.preprocess(torch.from_numpy(load_images([s.path for s in bad], SIZE, SIZE)))
    masks = torch.from_numpy(load_masks(bad, SIZE, SIZE))
    with torch.no_grad():
        moved = (det.scorer.project(x0) - x0).abs().sum(1)
    assert float(moved[masks].mean()) > 3 * float(moved[~masks].mean())
    with torch.inference_mode():
        raw_map, raw_score = det.raw(torch.from_numpy(load_images([s.path for s in ds.test], SIZE, SIZE)))
    labels = np.array([s.label for s in ds.test])
    assert image_auroc(labels, raw_score.numpy()) > 0.9
    assert pixel_auroc(load_masks(ds.test, SIZE, SIZE), raw_map.numpy()) > 0.85


def test_k0_map_is_the_reconstruction_error_and_mmd_head_follows_its_definition():
    s = _scorer(k_steps=0, score="mmd", mmd_samples=5, mmd_ref_size=7)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        mu, logvar = s.net.encode(x)
        s.set_references(tuple(mu.shape[1:]), torch.randn(30, mu[0].numel()), seed=0)
        amap, score = s(x)
        assert torch.allclose(amap, (x - s.net(x)[0]).abs().sum(1), atol=1e-6)
        # MMD² between z_s = μ + σ ε_s and the prior reference, IMQ with C = 2·D.
        d = mu[0].numel()
        z = mu.flatten(1)[:, None] + torch.exp(0.5 * logvar).flatten(1)[:, None] * s.eps[None]
        c = 2.0 * d
        k = lambda a, b: kernel(torch.cdist(a, b) ** 2, "imq", c).mean()  # noqa: E731
        for n in range(2):
            expect = k(z[n], z[n]) + k(s.ref_prior, s.ref_prior) - 2 * k(z[n], s.ref_prior)
            assert float(score[n]) == pytest.approx(float(expect), abs=1e-5)
    assert s.eps.shape == (5, d) and s.ref_prior.shape == s.ref_aggregate.shape == (7, d)


def test_derived_runs_switch_k_and_score_and_export_the_mmd_head(runs, synth_data, tmp_path):
    from adrt.export.pipeline import export_run
    from adrt.train.fit import load_run
    from adrt.train.generative import with_options

    run, _ = runs("vae")
    new = with_options(run, tmp_path / "mmd", k_steps=0, score="mmd", mmd_ref="aggregate", mmd_kernel="rbf")
    det, meta = load_run(new)
    assert (meta["config"]["k_steps"], meta["config"]["score"]) == (0, "mmd")
    base, _ = load_run(run)
    assert torch.equal(det.scorer.ref_aggregate, base.scorer.ref_aggregate)     # same fitted reference
    assert float(det.scorer.ref_term) != float(base.scorer.ref_term)             # recomputed for rbf/aggregate
    bundle = export_run(new, tmp_path / "b", synth_data)   # checks ORT parity (raises otherwise)
    parity = json.loads((bundle / "manifest.json").read_text())["export"]["parity"]
    assert parity["raw_score"]["max_rel"] < 1e-4 and parity["raw_map"]["max_rel"] < 1e-4
    with pytest.raises(AdrtError, match="latent_dim cannot change without retraining; test-time options: k_steps"):
        with_options(run, tmp_path / "x", latent_dim=4)


def test_diverging_projection_is_reported_not_returned(runs, tmp_path):
    """A step size that blows the projection up: training/calibration raise; the graph gives NaN, never a map."""
    from adrt.export.onnx import export_onnx
    from adrt.train.detector import Detector
    from adrt.train.fit import load_run
    from adrt.train.generative import with_options
    from adrt.train.generative.loop import rebuild_scorer
    from adrt.train.vae import VAE

    run, _ = runs("vae")
    with pytest.raises(AdrtError, match=r"non-finite .*vae projection diverged.*step_size=1e\+20.*smaller step_size"):
        with_options(run, tmp_path / "big", step_size=1e20, k_steps=2)
    assert not (tmp_path / "big").exists()
    det, _ = load_run(run)
    scorer = rebuild_scorer(VAE, det.scorer, replace(det.scorer.cfg, step_size=1e20, k_steps=2))
    bad = Detector(scorer, det.spec, sigma=scorer.cfg.sigma).eval()
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(AdrtError, match="non-finite"):
        bad(torch.from_numpy(x))
    path = export_onnx(bad, tmp_path / "bad.onnx")
    amap, score, raw_map, raw_score = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})
    assert np.isnan(raw_score).all() and np.isnan(score).all() and np.isnan(raw_map).all() and np.isnan(amap).all()


def test_guard_poisons_only_the_bad_images_in_the_graph(tmp_path):
    class G(torch.nn.Module):
        def forward(self, x):
            y = x * x * 1e30 * 1e30           # overflows to inf where |x| is large
            return guard_finite(y, y.mean(1), y.flatten(1).mean(1).clamp(max=1.0), "test")

    x = np.zeros((3, 2, 4, 4), dtype=np.float32)
    x[1, 0, 2, 2] = 1e10
    with pytest.raises(AdrtError, match=r"image\(s\) \[1\] of the batch: test"):
        G()(torch.from_numpy(x))
    p = tmp_path / "g.onnx"
    torch.onnx.export(G().eval(), (torch.from_numpy(x),), str(p), dynamo=True, opset_version=18, verbose=False)
    m, s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.isnan(s[1]) and np.isnan(m[1]).all()
    assert np.isfinite(s[[0, 2]]).all() and np.isfinite(m[[0, 2]]).all()
    # Float reductions only: TensorRT 8.6 (opset-17 copy) and 10 take the guard (no bool/int64 ReduceMin).
    import onnx

    from adrt.export.trt86 import to_trt86
    from adrt.export.trt_check import check_model

    assert not check_model(p, "10") and not check_model(to_trt86(onnx.load(str(p)))[0], "8.6")


@pytest.mark.parametrize("option, value, match", [
    ("k_steps", "-1", "k_steps=-1: expected an integer >= 0"),
    ("step_size", "0", "step_size=0.0: expected a finite positive number"),
    ("grad_weight", "cube", "grad_weight='cube': expected one of abs, sq, none"),
    ("mmd_ref", "posterior", "mmd_ref='posterior': expected one of prior, aggregate"),
    ("score", "elbo", "score='elbo': expected one of recon, mmd"),
    ("lam", "-0.5", "lam=-0.5: expected a finite number >= 0"),
])
def test_bad_options_are_refused_naming_the_option(option, value, match):
    from adrt.train.fit import make_config
    from adrt.train.registry import get_method

    # Refused when the config is made (before any data is read), naming the option.
    with pytest.raises(AdrtError, match=match):
        get_method("vae").build(make_config("vae", {option: value}))


def test_untileable_size_and_bad_images_are_refused(synth_data, tmp_path):
    from adrt.train.fit import train
    from adrt.train.vae import VAE

    with pytest.raises(AdrtError, match=r"48×48 is not a multiple of 32.*sizes that work: 32, 64, 96"):
        train("vae", synth_data, tmp_path / "run", size=48, log=lambda *a, **k: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(AdrtError, match=r"expected uint8 images N×H×W×3 with N ≥ 2, got shape \(1, 64, 64, 3\)"):
        VAE.fit(VAEConfig(), np.zeros((1, 64, 64, 3), np.uint8), lambda t: t)
    with pytest.raises(AdrtError, match="not a multiple of 32"):
        VAEScorer(VAEConfig())(torch.zeros(1, 3, 40, 40))


def test_jacodeco_probe_measures_the_decoder_jacobian(runs, synth_data, tmp_path):
    # benchmarks/vae_jacodeco.py (the #4 probe): log det JᵀJ is that of the decoder's Jacobian at the
    # posterior mean (checked here against a finite-difference Jacobian), and the JacoDeco row is the
    # sum of its parts.
    import importlib.util
    from pathlib import Path

    from adrt.data import Dataset, load_images
    from adrt.train.fit import load_run

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vae_jacodeco.py"
    spec = importlib.util.spec_from_file_location("vae_jacodeco", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run, _ = runs("vae")
    out = tmp_path / "jd"
    assert mod.main([str(run), str(synth_data), "--name", "t", "--limit", "3", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["test_images"] == 3 and [r["score"] for r in report["rows"]][-1].startswith("JacoDeco")

    det, _ = load_run(run)
    det.eval()
    first = report["per_image"][0]
    image = load_images([first["path"]], SIZE, SIZE)
    with torch.no_grad():
        net = det.scorer.net.double()
        x = det.preprocess(torch.from_numpy(image)).double()
        mu, _ = net.encode(x)
        eps = 1e-5
        cols = []
        for i in range(mu.numel()):
            d = torch.zeros(mu.numel(), dtype=mu.dtype)
            d[i] = eps
            d = d.view_as(mu)
            cols.append(((net.decode(mu + d) - net.decode(mu - d)) / (2 * eps)).flatten())
        jac = torch.stack(cols, 1)
        log_det = torch.linalg.slogdet(jac.T @ jac)[1].item()
        recon = ((x - net.decode(mu)) ** 2).sum().item()
    assert first["log_det_jtj"] == pytest.approx(log_det, rel=1e-3, abs=1e-2)
    assert first["recon"] == pytest.approx(recon, rel=1e-4)
    assert first["half_z_sq"] == pytest.approx(0.5 * (mu * mu).sum().item(), rel=1e-4)
