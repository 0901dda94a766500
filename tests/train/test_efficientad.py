"""EfficientAD: architectures and sizes, hard feature loss, quantile normalisation, augmentation,
procedural penalty images, training control. Tiny settings throughout."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adrt.errors import AdrtError  # noqa: E402

from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import one_thread, preprocess, quiet, score_test_split, state, synth_images  # noqa: E402,F401

TINY = dict(image_size=64, width=0.0625, out_channels=8, teacher_steps=4, steps=6, penalty_images=2,
            distill_data="deadleaves:2", checkpoint_every=2)


def tiny_cfg(**kw):
    from adrt.train.efficientad import EfficientADConfig

    return EfficientADConfig(**{**TINY, **kw})


@pytest.mark.parametrize("size", ["s", "m"])
def test_pdn_gives_the_papers_56x56_map_and_33px_receptive_field(size):
    from adrt.train.efficientad import map_size, pdn

    net = pdn(size, 8, 0.0625).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 256, 256)).shape == (1, 8, 56, 56) and map_size(256) == 56
        assert net(torch.zeros(1, 3, 128, 128)).shape[-1] == map_size(128) == 24
        # Receptive field: a 33×33 input gives one cell, and only pixels within it change that cell.
        assert net(torch.zeros(1, 3, 33, 33)).shape[-2:] == (1, 1)
        x = torch.randn(1, 3, 64, 64)
        y = net(x)
        x2 = x.clone()
        x2[..., 33:, :] = 0       # cell (0, 0) sees rows/cols 0..32 only
        assert torch.equal(net(x2)[..., 0, 0], y[..., 0, 0])


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_autoencoder_maps_the_image_to_the_pdn_grid_through_a_1x1_latent(image_size):
    from adrt.train.efficientad import AutoEncoder, map_size

    ae = AutoEncoder(image_size, 8, 0.125).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, image_size, image_size)
        assert ae.encoder(x).shape[-2:] == (1, 1)
        assert ae(x).shape == (2, 8, map_size(image_size), map_size(image_size))
    if image_size == 256:
        assert ae.sizes == (3, 8, 15, 32, 63, 127)      # the paper's decoder sizes


def test_hard_feature_loss_averages_only_the_top_quantile():
    from adrt.train.efficientad.fit import hard_loss

    target = torch.zeros(1, 1, 10, 100)
    pred = torch.zeros(1, 1, 10, 100)
    pred.view(-1)[:5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])    # squared errors 1, 4, 9, 16, 25
    # q = 0.998 of 1000 values: the top two (16, 25) are at or above the threshold.
    assert float(hard_loss(target, pred, 0.998)) == pytest.approx((16 + 25) / 2, rel=1e-3)
    assert float(hard_loss(target, pred, 0.5)) == pytest.approx(55 / 1000, rel=1e-3)   # ties at 0 count too


def test_map_is_the_quantile_normalised_mean_of_both_branches():
    from adrt.train.efficientad import EfficientADScorer

    torch.manual_seed(0)
    cfg = tiny_cfg()
    sc = EfficientADScorer(cfg).eval()
    with torch.no_grad():
        sc.t_mean.normal_()
        sc.t_std.uniform_(0.5, 2)
        sc.q_st.copy_(torch.tensor([0.2, 0.9]))
        sc.q_ae.copy_(torch.tensor([0.1, 0.3]))
        x = torch.randn(2, 3, 64, 64)
        m, score = sc(x)
        c = cfg.out_channels
        t = (sc.teacher(x) - sc.t_mean) / sc.t_std
        s = sc.student(x)
        a = sc.autoencoder(x)
        st = ((t - s[:, :c]) ** 2).mean(1)
        ae = ((a - s[:, c:]) ** 2).mean(1)
        ref = 0.5 * 0.1 * (st - 0.2) / 0.7 + 0.5 * 0.1 * (ae - 0.1) / 0.2
    assert score is None and m.shape == (2, 16, 16)          # 8×8 map padded by 4 to the 64/4 grid
    torch.testing.assert_close(m[:, 4:12, 4:12], ref)
    torch.testing.assert_close(m[:, :4, 4:12], ref[:, :1].expand(-1, 4, -1))   # border repeats the edge


def test_augmentation_changes_one_of_brightness_contrast_saturation_within_20_percent():
    from adrt.train.efficientad.fit import augment

    x = torch.rand(1, 3, 16, 16) * 1.6 - 0.8
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        y = augment(x, g)
        assert y.shape == x.shape and float(y.min()) >= -1 and float(y.max()) <= 1
        assert 0 < float((y - x).abs().max()) <= 0.2 * 2 + 1e-6


def test_dead_leaves_are_deterministic_covering_and_varied():
    from adrt.train.pretrain_data import dead_leaves, load_extra

    a, b = dead_leaves(3, 48, 40, seed=5), dead_leaves(3, 48, 40, seed=5)
    assert a.shape == (3, 48, 40, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, dead_leaves(3, 48, 40, seed=6))
    assert len(np.unique(a[0].reshape(-1, 3) // 16, axis=0)) > 5        # many discs, not one colour
    imgs, what = load_extra("deadleaves:2", 32, 32, 0, 7)
    assert imgs.shape == (2, 32, 32, 3) and what == "2 dead-leaves images"
    with pytest.raises(AdrtError, match="deadleaves:N"):
        load_extra("deadleaves:x", 32, 32, 0, 7)


def test_fit_is_reproducible_and_resumes_to_the_same_weights(synth_data, tmp_path):
    """Dropout in the autoencoder uses the global RNG: its state travels in the checkpoint too."""
    import os
    import signal

    from adrt.train.efficientad.fit import fit_scorer

    imgs = synth_images(synth_data, 10)
    ref = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=2, log=quiet))
    again = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=2, log=quiet))
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    ck = tmp_path / "s.pt"
    fired = []

    def log(msg="", end="\n"):   # Ctrl-C twice in the student stage, after step 3 (a save at step 2)
        if "student+autoencoder step 3/" in msg and not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=2, log=log)
    assert torch.load(ck, weights_only=True)["current"]["step"] == 3
    got = state(fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=2, log=quiet))
    assert all(torch.equal(ref[k], got[k]) for k in ref), [k for k in ref if not torch.equal(ref[k], got[k])]


def test_bad_options_and_too_few_images_are_refused(synth_data, tmp_path):
    from adrt.errors import DataError
    from adrt.train.efficientad import EfficientADScorer
    from adrt.train.efficientad.fit import fit_scorer
    from adrt.train.fit import make_config, train

    with pytest.raises(AdrtError, match="size='l'.*s, m"):
        EfficientADScorer(make_config("efficientad", {"size": "l"}))
    with pytest.raises(AdrtError, match="image_size=100"):
        EfficientADScorer(make_config("efficientad", {"image_size": "100"}))
    with pytest.raises(AdrtError, match="out_channels=200: at most 152"):
        fit_scorer(tiny_cfg(out_channels=200), synth_images(synth_data, 6), preprocess, log=quiet)
    with pytest.raises(DataError, match="3 left to fit.*need at least 4"):
        fit_scorer(tiny_cfg(), synth_images(synth_data, 3), preprocess, log=quiet)
    with pytest.raises(DataError, match="need at least 17"):
        train("efficientad", synth_data, tmp_path / "run", size=SIZE, options={**TINY, "min_val": 15}, log=quiet)
    assert not (tmp_path / "run").exists()


def test_medium_size_trains_and_exports_with_parity(synth_data, tmp_path):
    from adrt.export.onnx import export_bundle
    from adrt.train.fit import load_run, train

    run = train("efficientad", synth_data, tmp_path / "m", size=SIZE, options={**TINY, "size": "m"}, log=quiet)
    det, meta = load_run(run)
    assert meta["config"]["size"] == "m" and len(det.scorer.student) == 13        # PDN-M layers
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    b = export_bundle(det, meta, tmp_path / "mb", sample_images=x)
    import json
    parity = json.loads((b / "manifest.json").read_text())["export"]["parity"]
    assert parity["raw_map"]["max_rel"] < 1e-4 and parity["anomaly_map"]["max_abs"] < 1e-4


def test_default_run_detects_synthetic_defects(runs, synth_data):
    """The registry-wide default run (also exported and parity-checked in tests/export)."""
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, _ = runs("efficientad")
    det, meta = load_run(run)
    (amap, score, raw_map, raw_score), labels, masks = score_test_split(det, synth_data)
    assert image_auroc(labels, raw_score.numpy()) > 0.9
    assert pixel_auroc(masks, raw_map.numpy()) > 0.8
    assert 0 <= float(amap.min()) and float(amap.max()) <= 1


def test_nearly_equal_quantiles_stop_training_with_a_clear_error(synth_data, monkeypatch):
    """The 640-px case: quantiles 0.74087 / 0.74106 (spread 2.6e-4 of their size) would divide
    noise up ~4 000×; training must stop, not write that map."""
    from adrt.train.efficientad import EfficientAD
    from adrt.train.efficientad.model import EfficientADScorer
    from adrt.train.options import check_spread

    check_spread("m", "x", 0.016, 0.10, "q")                 # an ordinary spread passes
    with pytest.raises(AdrtError, match="spread of 0.00026 of their size"):
        check_spread("m", "x", 0.74087, 0.74106, "q")
    real = EfficientADScorer.raw_maps

    def nearly_constant(self, x):
        st, ae = real(self, x)
        return 0.74 + 1e-6 * st, ae
    monkeypatch.setattr(EfficientADScorer, "raw_maps", nearly_constant)
    with pytest.raises(AdrtError, match=r"efficientad: the student-teacher map normalisation degenerates: its "
                                        r"q_a = 0.9 and q_b = 0.995 quantiles on \d+ validation images are 0.74"):
        EfficientAD.fit(tiny_cfg(), synth_images(synth_data, 12), preprocess, log=quiet)
