"""Registry-wide and per-method tests of the torch detectors."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adrt.errors import AdrtError  # noqa: E402
from adrt.train.detector import Detector, GaussianBlur, InputSpec, blur_matrix, gaussian_kernel1d  # noqa: E402
from adrt.train.registry import available, get_method, register  # noqa: E402

from tests.conftest import SIZE  # noqa: E402


def test_registry_lists_methods_and_refuses_unknown_and_duplicates():
    assert {"patchcore", "padim"} <= set(available())
    with pytest.raises(AdrtError, match="unknown method 'nope'.*patchcore"):
        get_method("nope")
    with pytest.raises(AdrtError, match="already registered"):
        register("patchcore")(type("Dup", (), {}))


def test_every_method_meets_the_protocol_and_an_incomplete_one_is_refused():
    from adrt.train.registry import MEMBERS, check_method

    for name in available():
        cls = get_method(name)
        assert cls.name == name and all(hasattr(cls, m) for m in MEMBERS)
        assert set(cls.TEST_TIME_OPTIONS) <= {f.name for f in fields(cls.Config)}
    with pytest.raises(AdrtError, match=r"method 'half' .* lacks TEST_TIME_OPTIONS, absent, fit, derive"):
        register("half")(type("Half", (), {"Config": object, "build": staticmethod(lambda cfg: None)}))
    assert "half" not in available()
    with pytest.raises(AdrtError, match="TEST_TIME_OPTIONS .* are not all options"):
        check_method("bad", type("Bad", (get_method("padim"),), {"TEST_TIME_OPTIONS": ("nope",)}))


def test_readme_method_table_lists_the_registry():
    """The README's table of methods has one row per registered method, no more."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text.split("### Methods", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M)
    assert sorted(rows) == available()


def test_derive_refuses_a_method_without_test_time_options(runs, tmp_path):
    from adrt.train.derive import derive

    run, _ = runs("padim")
    with pytest.raises(AdrtError, match="'padim' run; padim has no test-time options"):
        derive(run, tmp_path / "d", sigma=2.0)


def test_unknown_option_lists_valid_ones():
    from adrt.train.fit import make_config

    with pytest.raises(AdrtError, match="no option 'coreset'.*coreset_ratio"):
        make_config("patchcore", {"coreset": "0.1"})
    assert make_config("patchcore", {"coreset_ratio": "0.2"}).coreset_ratio == 0.2
    assert make_config("padim", {"tap_strides": "8,16"}).tap_strides == (8, 16)


def test_blur_matrix_equals_reflect_padded_convolution():
    sigma, n = 2.0, 23
    m = torch.rand(2, n, n + 5)
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    x = torch.nn.functional.pad(m.unsqueeze(1), (r, r, r, r), mode="reflect")
    ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1)).squeeze(1)
    got = GaussianBlur(sigma, n, n + 5)(m)
    assert torch.allclose(got, ref, atol=1e-5)
    # Rows of the matrix sum to 1: a constant map stays constant.
    assert torch.allclose(blur_matrix(n, sigma).sum(1), torch.ones(n), atol=1e-6)



@pytest.mark.parametrize("small, big", [((8, 8), (64, 64)), ((5, 7), (40, 33)), ((32, 32), (256, 256)), ((12, 12), (12, 12))])
@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_blur_upsample_fold_equals_interpolate_then_blur(small, big, sigma):
    # The detector folds the bilinear upsampling into the blur GEMMs; it must equal
    # F.interpolate(bilinear, align_corners=False) followed by the blur.
    import torch.nn.functional as F

    m = torch.rand(3, *small) * 10
    blur = GaussianBlur(sigma, *big)
    ref = blur(F.interpolate(m.unsqueeze(1), size=big, mode="bilinear", align_corners=False).squeeze(1))
    got = blur.upsample(m, *big)
    assert got.shape == (3, *big)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-5)
    # The second call reads the matrices kept from the first; they stay out of the state dict.
    assert torch.equal(blur.upsample(m, *big), got)
    assert not any(k.startswith("up_") for k in blur.state_dict())


def test_blur_matrix_handles_kernels_wider_than_the_signal():
    # Reflection folds again when the radius exceeds the length; rows still sum to 1.
    for n, sigma in [(5, 4.0), (2, 4.0), (1, 1.0)]:
        k = blur_matrix(n, sigma)
        assert k.shape == (n, n) and torch.allclose(k.sum(1), torch.ones(n), atol=1e-6)
    assert torch.allclose(blur_matrix(2, 4.0), blur_matrix(2, 4.0).flip(0).flip(1))

@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_detector_outputs_shapes_ranges_and_localises_defects(runs, synth_data, method):
    from adrt.data import Dataset, load_images, load_masks
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, _ = runs(method)
    det, meta = load_run(run)
    ds = Dataset.open(synth_data)
    x = torch.from_numpy(load_images([s.path for s in ds.test], SIZE, SIZE))
    with torch.inference_mode():
        amap, score, raw_map, raw_score = det(x)
    n = len(ds.test)
    assert amap.shape == raw_map.shape == (n, SIZE, SIZE) and score.shape == raw_score.shape == (n,)
    for t in (amap, score, raw_map, raw_score):
        assert torch.isfinite(t).all()
    assert 0 <= float(amap.min()) and float(amap.max()) <= 1
    labels = np.array([s.label for s in ds.test])
    masks = load_masks(ds.test, SIZE, SIZE)
    # Painted defects on a regular texture: a working detector separates them clearly.
    assert image_auroc(labels, raw_score.numpy()) > 0.9
    assert pixel_auroc(masks, raw_map.numpy()) > 0.85
    # Calibration: 0.5 is the threshold, and normal holdout scores sit below it on average.
    cal = meta["calibration"]
    assert cal["score_threshold"] > cal["score_mean"]
    good = labels == 0
    assert float(score[torch.from_numpy(good)].mean()) < 0.5


class Fixed(torch.nn.Module):
    """Stands in for the backbone taps so the scoring can be tested alone."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return self.feats


def test_patchcore_scores_match_brute_force_nearest_neighbour():
    from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, _nn_sq_dist

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 7, generator=g)
    q = torch.randn(2, 50, 7, generator=g)
    aug = torch.cat([-2 * bank.t(), (bank * bank).sum(1)[None]], 0)
    ref = torch.cdist(q, bank[None].expand(2, -1, -1)).amin(-1) ** 2
    for chunk in (300, 64, 7):   # tiled and untiled give the same minimum
        assert torch.allclose(_nn_sq_dist(q, aug, chunk), ref, atol=1e-4)


def test_patchcore_reweighting_follows_the_paper():
    """s = (1 - exp(d*)/Σ_{N_b(m*)} exp(d)) · s*, with N_b(m*) the b nearest bank rows of m*."""
    from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer

    cfg = PatchCoreConfig(num_neighbors=3, bank_chunk=5, embed_dim=0)
    scorer = PatchCoreScorer(cfg, pretrained=False)
    assert scorer.proj is None and scorer.embed_dim == scorer.features.channels
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(12, scorer.features.channels, generator=g)
    scorer.set_bank(bank)
    feats = torch.randn(1, scorer.features.channels, 2, 2, generator=g)
    scorer.features = Fixed(feats)
    patch, score = scorer(torch.zeros(1, 3, 16, 16))
    q = feats.flatten(2)[0].t()
    d = torch.cdist(q, bank)
    s_star, p = d.amin(1).max(0)
    m_star = d[p].argmin()
    nb = torch.cdist(bank[m_star][None], bank)[0].argsort()[:3]
    w = 1 - torch.exp(d[p, nb[0]]) / torch.exp(d[p, nb]).sum()
    assert torch.allclose(patch.flatten(), d.amin(1), atol=1e-4)
    assert torch.allclose(score[0], w * s_star, atol=1e-4)


def test_patchcore_projection_keeps_distances_in_the_principal_subspace():
    """Features lying in a k-dim subspace: distances after projecting on k principal axes are exact."""
    from adrt.train.patchcore.model import PatchCoreConfig, PatchCoreScorer, principal_axes

    g = torch.Generator().manual_seed(2)
    k = 5
    scorer = PatchCoreScorer(PatchCoreConfig(num_neighbors=3, embed_dim=k), pretrained=False)
    d = scorer.features.channels
    basis = torch.linalg.qr(torch.randn(d, k, generator=g))[0]            # D×k orthonormal
    scale = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])                        # distinct variances

    def sample(n):
        return (torch.randn(n, k, generator=g) * scale) @ basis.t() + 0.3   # offset: PCA centres

    train = sample(400)
    axes = principal_axes(train, k)
    assert torch.allclose(axes.t() @ axes, torch.eye(k), atol=1e-5)       # orthonormal
    assert torch.allclose((axes.t() @ basis).abs().amax(1), torch.ones(k), atol=2e-2)   # the true axes, in order
    assert torch.equal(axes, principal_axes(train, k))                     # deterministic signs
    scorer.set_projection(train)
    assert scorer.proj.shape == (d, k)
    bank = train[:40]
    scorer.set_bank(scorer.project(bank))
    assert scorer.embed_dim == k and scorer.bank_aug.shape == (k + 1, 40)
    feats = sample(4).t().reshape(1, d, 2, 2)
    scorer.features = Fixed(feats)
    patch, _ = scorer(torch.zeros(1, 3, 16, 16))
    ref = torch.cdist(feats.flatten(2)[0].t(), bank).amin(1)               # full-dimensional distances
    assert torch.allclose(patch.flatten(), ref, atol=1e-3)


def test_patchcore_run_saved_before_embed_dim_loads_unprojected(synth_data, tmp_path):
    import json

    from adrt.train.fit import load_run, train

    run = train("patchcore", synth_data, tmp_path / "old", size=32, options={"embed_dim": 0},
                log=lambda *a, **k: None)
    meta = json.loads((run / "detector.json").read_text())
    del meta["config"]["embed_dim"]                    # as written before the option existed
    (run / "detector.json").write_text(json.dumps(meta))
    det, _ = load_run(run)
    assert det.scorer.proj is None and det.scorer.cfg.embed_dim == 0
    x = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.isfinite(det(x)[1]).all()


def test_greedy_coreset_is_k_center_and_deterministic():
    from adrt.train.patchcore.model import greedy_coreset

    g = torch.Generator().manual_seed(0)
    # Three tight clusters: a 3-point coreset must pick one point from each.
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(40, 2, generator=g) for c in centers])
    sel = greedy_coreset(pts, 3, projection_dim=0, seed=3)
    assert sorted((sel // 40).tolist()) == [0, 1, 2]
    assert torch.equal(sel, greedy_coreset(pts, 3, projection_dim=0, seed=3))


def test_padim_gaussians_match_numpy_reference():
    from adrt.train.padim.model import fit_gaussians

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 5, 2, 3, generator=g) * torch.arange(1, 6).view(1, 5, 1, 1)
    mean, inv_cov, shrink = fit_gaussians(feats, eps=0.01)
    x = feats[:, :, 1, 2].double().numpy()            # position (1, 2) → index 5
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    d2 = ((s - mu * np.eye(d)) ** 2).sum()
    b2 = min(sum(((np.outer(v, v) - s) ** 2).sum() for v in xc) / n**2, d2)
    a = b2 / d2
    cov = ((1 - a) * s + a * mu * np.eye(d)) * n / (n - 1) + 0.01 * np.eye(d)
    assert np.allclose(mean[5].numpy(), x.mean(0), atol=1e-5)
    assert np.isclose(float(shrink[5]), a, atol=1e-6)
    assert np.allclose(inv_cov[5].numpy(), np.linalg.inv(cov), rtol=1e-4, atol=1e-5)


def test_padim_map_is_mahalanobis_distance():
    from adrt.train.padim.model import PaDiMConfig, PaDiMScorer

    scorer = PaDiMScorer(PaDiMConfig(n_features=4), pretrained=False)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, scorer.features.channels, 2, 2, generator=g)
    scorer.features = Fixed(feats)
    a = torch.randn(4, 4, 4, generator=g)
    inv = a @ a.transpose(1, 2) + torch.eye(4)
    mean = torch.randn(4, 4, generator=g)
    scorer.set_gaussians(mean, inv)
    m, score = scorer(torch.zeros(2, 3, 16, 16))
    assert score is None
    f = feats[:, scorer.channel_idx].flatten(2)       # N×d×P
    for i in range(2):
        for p in range(4):
            diff = f[i, :, p] - mean[p]
            assert torch.isclose(m.flatten(1)[i, p], (diff @ inv[p] @ diff).sqrt(), atol=1e-4)


def test_training_on_too_few_images_says_how_many_are_needed(tmp_path):
    from adrt.errors import DataError
    from adrt.synth import make_dataset
    from adrt.train.fit import train

    data = make_dataset(tmp_path / "d", size=32, n_train=3, n_test_good=1, n_test_defect=2)
    with pytest.raises(DataError, match="need at least"):
        train("padim", data, tmp_path / "run", size=32, log=lambda *a, **k: None)
    assert not (tmp_path / "run").exists()


def test_run_folder_round_trip_and_version_check(runs, tmp_path):
    import json
    import shutil

    from adrt.train.fit import load_run

    run, _ = runs("padim")
    det, meta = load_run(run)
    x = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.inference_mode():
        a = det(x)
        b = load_run(run)[0](x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    meta["checkpoint_version"] = 99
    (bad / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(AdrtError, match="checkpoint version 99"):
        load_run(bad)
    with pytest.raises(AdrtError, match="not a run folder"):
        load_run(tmp_path)


def test_calibration_refuses_non_finite_outputs():
    class NaNScorer(torch.nn.Module):
        def forward(self, x):
            m = x.mean(1)[:, ::8, ::8]
            return m, torch.log(x.mean((1, 2, 3)) - 10.0)   # NaN for every image in [-1, 1]

    det = Detector(NaNScorer(), InputSpec(32, 32))
    with pytest.raises(AdrtError, match=r"NaN/Inf on held-out normal image\(s\) \[0, 1\]"):
        from adrt.train.detector import calibrate

        calibrate(det, np.zeros((2, 32, 32, 3), np.uint8))
    assert float(det.score_threshold) == 0.0   # nothing half-applied
