"""The inpainting method: partial convolutions, mask sets, the batched graph vs the sliding-mask loop,
training (seeded, logged) and its errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from adrt.errors import AdrtError  # noqa: E402
from adrt.train.inpaint import (InpaintConfig, InpaintScorer, check_size, mask_set, size_multiple,  # noqa: E402
                                sliding_mask_map, with_mask_set)
from adrt.train.inpaint.model import PartialConv2d, PartialUNet, ReconstructionError, gms, _prewitt  # noqa: E402
from adrt.train.inpaint.fit import fit_scorer, n_steps, resolve_device  # noqa: E402

from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import one_thread  # noqa: E402,F401

# Small network and few steps: the tests check behaviour, not quality.
TINY = dict(channels=(4, 8, 8), cells=(2, 4, 8), train_cells=(2, 4, 8), iterations=3, batch_size=4)


def _preprocess(images):
    return (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_conv_follows_the_definition(stride):
    """out = W·(X⊙M)·sum(1)/sum(M) + b where sum(M) > 0, else 0; new mask = [sum(M) > 0]."""
    g = torch.Generator().manual_seed(0)
    parts, k = (2, 3), 3
    layer = PartialConv2d(parts, 4, k, stride)
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    x = torch.randn(2, 5, 9, 9, generator=g)
    m = (torch.rand(2, 2, 9, 9, generator=g) > 0.7).float()
    m[0, :, :5, :5] = 0                                   # a hole wider than the window
    m_full = torch.cat([m[:, :1].expand(-1, 2, -1, -1), m[:, 1:].expand(-1, 3, -1, -1)], 1)   # per channel
    xm = x * m_full
    out, new_m = layer(xm, m)
    # Reference through unfold: explicit windows, no convolution.
    cols_x = F.unfold(xm, k, padding=1, stride=stride)             # N×(C·k·k)×L
    cols_m = F.unfold(m_full, k, padding=1, stride=stride)
    s = cols_m.sum(1, keepdim=True)                                 # N×1×L
    w = layer.conv.weight.reshape(4, -1)
    ref = (w @ cols_x) * (5 * k * k) / s.clamp_min(1) + layer.bias.view(1, 4, 1)
    ref = torch.where(s > 0, ref, torch.zeros_like(ref))
    assert torch.allclose(out.flatten(2), ref, atol=1e-5)
    assert torch.equal(new_m.flatten(2), (s > 0).float())
    assert (new_m == 0).any()                                     # the big hole survives one layer
    assert torch.all(out * (1 - new_m) == 0)                      # zero where the new mask is zero


def test_network_keeps_holes_zero_and_fills_them():
    torch.manual_seed(0)
    net = PartialUNet((4, 8, 8, 8))
    m = mask_set((8,), 2, 32, 32, "random", seed=1)[:1]
    x = torch.randn(1, 3, 32, 32) * m
    seen = []
    hooks = [mod.register_forward_hook(lambda mod, inp, out: seen.append(out)) for mod in net.modules()
             if isinstance(mod, PartialConv2d)]
    y = net(x, m)
    for h in hooks:
        h.remove()
    for out, new_m in seen:
        assert torch.all(out * (1 - new_m) == 0)
    assert seen[-1][1].min() == 1                                 # the output covers every hole
    assert torch.isfinite(y).all() and y.shape == x.shape


def test_mask_sets_partition_each_cell_size_and_are_deterministic():
    cells, n, h, w = (2, 4, 8, 16), 3, 64, 96
    for assignment in ("random", "regular"):
        m = mask_set(cells, n, h, w, assignment, seed=5)
        assert m.shape == (len(cells) * n, 1, h, w)
        holes = (1 - m).view(len(cells), n, h, w)
        assert torch.equal(holes.sum(1), torch.ones(len(cells), h, w))   # every pixel hidden exactly once per size
        for s, k in enumerate(cells):
            owner = holes[s].argmax(0)[::k, ::k]                          # mask owning each cell
            assert torch.equal(holes[s].argmax(0), owner.repeat_interleave(k, 0).repeat_interleave(k, 1))
            counts = torch.bincount(owner.flatten(), minlength=n)
            assert int(counts.max() - counts.min()) <= 1                  # equal shares
            if assignment == "regular":                                   # no edge-adjacent cells share a mask
                assert (owner[1:] != owner[:-1]).all() and (owner[:, 1:] != owner[:, :-1]).all()
        assert torch.equal(m, mask_set(cells, n, h, w, assignment, seed=5))
    a, b = mask_set(cells, n, h, w, "random", 5), mask_set(cells, n, h, w, "random", 6)
    assert not torch.equal(a, b)
    # The masks of one cell size do not depend on the rest of the set: smaller sets are subsets.
    assert torch.equal(mask_set((8,), n, h, w, "random", 5), a[2 * n : 3 * n])


def test_sizes_the_mask_set_cannot_tile_are_refused_with_sizes_that_work():
    cfg = InpaintConfig()
    assert size_multiple(cfg) == 32
    with pytest.raises(AdrtError, match=r"48×48 .*multiples of 32; sizes that work: 32, 64, 96, 128"):
        check_size(cfg, 48, 48)
    check_size(cfg, 64, 128)
    with pytest.raises(AdrtError, match="multiples of 96"):
        check_size(InpaintConfig(cells=(3, 8), train_cells=(2,)), 64, 64)
    scorer = InpaintScorer(cfg)
    with pytest.raises(AdrtError, match="no mask set"):
        scorer(torch.zeros(1, 3, 64, 64))
    scorer.set_masks(64, 64)
    with pytest.raises(AdrtError, match="input is 96×96 but the mask set was made for 64×64"):
        scorer(torch.zeros(1, 3, 96, 96))


def test_training_refuses_an_untileable_size_before_fitting(synth_data, tmp_path):
    from adrt.train.fit import train

    lines = []
    with pytest.raises(AdrtError, match="sizes that work: 32, 64, 96"):
        train("inpaint", synth_data, tmp_path / "run", size=48, log=lambda *a, **k: lines.append(a))
    assert not (tmp_path / "run").exists()
    assert not any("step" in str(a) for a in lines)


@pytest.mark.parametrize("option, value, match", [
    ("n_masks", "1", "n_masks=1: expected an integer >= 2"),
    ("error", "ssim", "error='ssim': expected one of msgms, se"),
    ("assignment", "spiral", "expected one of random, regular"),
    ("cells", "0,4", "cells=.*integers >= 1"),
    ("device", "tpu", "expected one of cpu, cuda, auto"),
    ("iterations", "0", "iterations=0: expected an integer >= 1"),
])
def test_bad_options_are_refused_naming_the_option(option, value, match):
    from adrt.train.fit import make_config
    from adrt.train.registry import get_method

    # Refused when the config is made (before any data is read), naming the option.
    with pytest.raises(AdrtError, match=match):
        get_method("inpaint").build(make_config("inpaint", {option: value}))


def test_cuda_is_refused_when_absent_not_silently_replaced():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(AdrtError, match=r"device='cuda': torch.cuda.is_available\(\) is False"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


def test_batched_graph_equals_the_sliding_mask_loop():
    torch.manual_seed(0)
    for error in ("msgms", "se"):
        cfg = InpaintConfig(channels=(8, 8, 16, 16, 16), n_masks=3, error=error)
        scorer = InpaintScorer(cfg).eval()
        scorer.set_masks(64, 64, seed=2)
        x = torch.rand(3, 3, 64, 64) * 2 - 1
        with torch.inference_mode():
            batched, score = scorer(x)
            loop = sliding_mask_map(scorer, x)
        assert score is None and batched.shape == (3, 64, 64)
        assert torch.allclose(batched, loop, atol=1e-5), float((batched - loop).abs().max())


def test_reconstruction_of_a_hole_does_not_see_the_hole():
    """Changing the image inside the holes of one mask leaves the reconstruction there unchanged."""
    torch.manual_seed(0)
    scorer = InpaintScorer(InpaintConfig(channels=(8, 8, 8, 8, 8))).eval()
    scorer.set_masks(64, 64)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    s, j = 2, 1                                            # cell size 8, second mask
    hole = 1 - scorer.masks[s * 3 + j]
    x2 = x + hole * torch.randn_like(x)
    with torch.inference_mode():
        r1, r2 = scorer.reconstructions(x)[0, s], scorer.reconstructions(x2)[0, s]
    assert torch.allclose(r1 * hole, r2 * hole, atol=1e-5)
    assert not torch.allclose(r1, r2, atol=1e-3)           # ...but the other masks' holes see it


def test_error_maps():
    k = _prewitt()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for kind in ("msgms", "se"):
        e = ReconstructionError(kind)
        assert torch.allclose(e(x, x), torch.zeros(2, 32, 32), atol=1e-6)
        bad = x.clone()
        bad[:, :, 10:14, 10:14] = -bad[:, :, 10:14, 10:14]
        d = e(x, bad)
        assert float(d[:, 11:13, 11:13].mean()) > 10 * float(d[:, 24:, 24:].mean())
    # GMS by hand on a ramp: gradients (Prewitt, /3) of a horizontal ramp of slope a are a·2 in x.
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8) * 0.01
    g = gms(ramp, 2 * ramp, k)[0, 0, 3:5, 3:5]
    ga, gb = 0.02, 0.04
    assert torch.allclose(g, torch.full_like(g, (2 * ga * gb + 0.0026) / (ga**2 + gb**2 + 0.0026)), atol=1e-5)
    se = ReconstructionError("se")(x, x + 0.5)
    assert torch.allclose(se, torch.full_like(se, 0.25))


def test_fit_is_seeded_logs_progress_and_learns():
    cfg = InpaintConfig(**{**TINY, "iterations": 30, "lr": 3e-3})
    # Smooth images (a colour gradient with a random offset): inpaintable from context.
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(0)
    imgs = np.stack([np.stack([(xx * 4 + o) % 256, (yy * 4 + o) % 256, np.full_like(xx, o)], -1)
                     for o in rng.integers(0, 100, 12)]).astype(np.uint8)
    lines = []
    a = fit_scorer(cfg, imgs, _preprocess, seed=1, log=lambda m="", end="\n": lines.append((m, end)))
    b = fit_scorer(cfg, imgs, _preprocess, seed=1, log=lambda *a, **k: None)
    c = fit_scorer(InpaintConfig(**TINY), imgs, _preprocess, seed=2, log=lambda *a, **k: None)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.net.enc[0].conv.weight, c.net.enc[0].conv.weight)
    whole = [m for m, end in lines if end == "\n"]
    assert any("30 steps" in m for m in whole) and any("step 30/30" in m for m in whole)
    losses = [float(m.split("loss ")[1].split()[0]) for m in whole if ": loss " in m]
    assert losses[-1] < 0.8 * losses[0], losses
    assert not a.net.training and a.masks.shape == (9, 1, 32, 32)


def test_steps_follow_epochs_and_are_capped():
    cfg = InpaintConfig(iterations=1000, epochs=10, batch_size=8)
    assert n_steps(cfg, 16) == 10 * 2
    assert n_steps(cfg, 17) == 10 * 3
    assert n_steps(cfg, 5000) == 1000


def test_trained_detector_matches_loop_and_localises(runs, synth_data):
    from adrt.data import Dataset, load_images, load_masks
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, bundle = runs("inpaint")
    det, meta = load_run(run)
    assert meta["config"]["cells"] == [2, 4, 8] and det.scorer.masks.shape == (9, 1, SIZE, SIZE)
    ds = Dataset.open(synth_data)
    imgs = load_images([s.path for s in ds.test], SIZE, SIZE)
    with torch.inference_mode():
        x = det.preprocess(torch.from_numpy(imgs[-3:]))           # a defect, and the loop is slow
        m, _ = det.scorer(x)
        assert torch.allclose(m, sliding_mask_map(det.scorer, x), atol=1e-5)
        amap, score, raw_map, raw_score = det(torch.from_numpy(imgs))
    assert all(torch.isfinite(t).all() for t in (amap, score, raw_map, raw_score))
    labels = np.array([s.label for s in ds.test])
    masks = load_masks(ds.test, SIZE, SIZE)
    # A few dozen steps on 16 images: far from converged, but the painted defects stand out.
    assert image_auroc(labels, raw_score.numpy()) > 0.8
    assert pixel_auroc(masks, raw_map.numpy()) > 0.8


def test_with_mask_set_reuses_the_network_and_recalibrates(runs, synth_data, tmp_path):
    from adrt.train.fit import load_run

    run, _ = runs("inpaint")
    out = with_mask_set(run, tmp_path / "m8", cells=(8,), n_masks=2, error="se")
    det, meta = load_run(out)
    base, base_meta = load_run(run)
    assert det.scorer.masks.shape == (2, 1, SIZE, SIZE)
    assert meta["config"]["cells"] == [8] and meta["config"]["error"] == "se"
    assert meta["training"]["derived_from"]["run"] == str(run.resolve())
    assert meta["calibration"]["score_mean"] != base_meta["calibration"]["score_mean"]
    for p, q in zip(det.scorer.net.parameters(), base.scorer.net.parameters()):
        assert torch.equal(p, q)
    # Same seed and cell size: the 8-px masks are those of the base set when n_masks matches.
    out3 = with_mask_set(run, tmp_path / "m8x3", cells=(8,))
    assert torch.equal(load_run(out3)[0].scorer.masks, base.scorer.masks[6:9])
    with pytest.raises(AdrtError, match="iterations cannot change without retraining"):
        with_mask_set(run, tmp_path / "bad", iterations=5)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "detector.json").write_text(json.dumps({**base_meta, "method": "padim"}))
    with pytest.raises(AdrtError, match="a 'padim' run, not an inpaint run"):
        with_mask_set(other, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert json.loads((out / "detector.json").read_text())["method"] == "inpaint"


@pytest.mark.gpu
def test_training_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    imgs = _images(8, 32)
    cfg = InpaintConfig(**{**TINY, "device": "cuda"})
    scorer = fit_scorer(cfg, imgs, _preprocess, seed=0, log=lambda *a, **k: None)
    assert next(scorer.parameters()).device.type == "cpu"          # returned on the CPU, ready to export
    with torch.inference_mode():
        m, _ = scorer(_preprocess(imgs[:2]))
    assert torch.isfinite(m).all()
