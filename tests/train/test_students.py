"""Uninformed Students: dense evaluation, scoring formula, losses, training control (Ctrl-C,
checkpoint/resume, seeds), the validation split, single-scale runs. Tiny settings throughout."""
from __future__ import annotations

import signal

import pytest

torch = pytest.importorskip("torch")

from adrt.errors import AdrtError, DataError  # noqa: E402

from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import (interrupting_log as _interrupting_log, one_thread, preprocess, quiet,  # noqa: E402,F401
                                 score_test_split, state, synth_images)

# A few seconds per fit on the synthetic 64×64 images.
TINY = dict(scales=(17, 33), width=8, descriptor_dim=16, bank_size=64, teacher_steps=6, teacher_batch=8,
            distill_data="deadleaves:2", student_steps=4, student_epochs=1.0, stats_images=4, checkpoint_every=2)


def tiny_cfg(**kw):
    from adrt.train.students import StudentsConfig

    return StudentsConfig(**{**TINY, **kw})


@pytest.mark.parametrize("p", [17, 33, 65])
def test_dense_evaluation_equals_the_patch_network_at_every_pixel(p):
    """Multi-pool dense evaluation (à-trous form) gives exactly the patch network's descriptor of the
    p×p patch centred on each pixel (reflect padding at the border)."""
    from adrt.train.students import PatchNet

    torch.manual_seed(0)
    net = PatchNet(p, width=6, dim=5, copies=2).eval()
    x = torch.randn(1, 3, 40, 37)
    with torch.no_grad():
        dense = net.dense(x)
        assert dense.shape == (1, 10, 40, 37)
        r = p // 2
        xp = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
        for (y, c) in [(0, 0), (39, 36), (17, 5), (3, 30)]:
            patch = net(xp[:, :, y : y + p, c : c + p])
            assert patch.shape == (1, 10, 1, 1)
            torch.testing.assert_close(patch[0, :, 0, 0], dense[0, :, y, c], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("j", [1, 2, 4, 8])
def test_dilated_max_pool_as_convs_equals_the_max_pool(j):
    """The TensorRT-ready form (depthwise convs, a + relu(b − a)) of the 2×2 stride-1 max-pool
    dilated by j equals torch's dilated max-pool up to one rounding, and exports without MaxPool
    dilations."""
    from adrt.train.students.model import max_pool2_dilated

    torch.manual_seed(0)
    x = torch.randn(2, 5, 44, 37) * 100
    want = torch.nn.functional.max_pool2d(x, 2, stride=1, dilation=j)
    got = max_pool2_dilated(x, j)
    assert got.shape == want.shape == (2, 5, 44 - j, 37 - j)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)     # |x| ≤ ~500: one float32 rounding


def test_eval_dense_equals_the_training_form_with_dilated_max_pools():
    """Eval mode (the exported graph) runs the conv form; training mode torch's dilated max-pool, the
    graph before the rewrite: the same descriptors."""
    from adrt.train.students import PatchNet

    torch.manual_seed(0)
    net = PatchNet(65, width=6, dim=5, copies=2)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        old = net.train().dense(x)
        new = net.eval().dense(x)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_grouped_students_are_independent_networks():
    """Copies held as one grouped network share nothing: changing one copy's weights changes only its output."""
    from adrt.train.students import PatchNet

    torch.manual_seed(0)
    net = PatchNet(17, width=6, dim=4, copies=3).eval()
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        before = net(x).view(2, 3, 4)
        for conv in net.convs:          # perturb copy 1's slice of every layer
            conv.weight[conv.out_channels // 3 : 2 * conv.out_channels // 3] += 0.5
        net.head.weight[4:8] += 0.5
        after = net(x).view(2, 3, 4)
    assert torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, 2], after[:, 2])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_map_is_normalised_error_plus_variance_averaged_over_scales():
    """e = ||mean_i S_i − (T − μ)/σ||², v = mean_i ||S_i||² − ||mean_i S_i||² (the paper's form), each
    standardised with the validation statistics; multi-scale = mean over receptive fields."""
    from adrt.train.students import StudentsScorer

    torch.manual_seed(0)
    cfg = tiny_cfg(dense_size=0)
    sc = StudentsScorer(cfg).eval()
    with torch.no_grad():
        sc.t_mean.normal_()
        sc.t_std.uniform_(0.5, 2.0)
        sc.err_stats.copy_(torch.tensor([[3.0, 2.0], [5.0, 4.0]]))
        sc.var_stats.copy_(torch.tensor([[0.5, 0.25], [0.1, 0.2]]))
        x = torch.randn(2, 3, 48, 48)
        got, score = sc(x)
        assert score is None and got.shape == (2, 48, 48)
        maps = []
        for k, p in enumerate(cfg.scales):
            t = (sc.teachers[k].dense(x) - sc.t_mean[k].view(1, -1, 1, 1)) / sc.t_std[k].view(1, -1, 1, 1)
            s = [y for y in sc.students[k].dense(x).split(cfg.descriptor_dim, dim=1)]
            mean = sum(s) / len(s)
            e = ((mean - t) ** 2).sum(1)
            v = sum((si**2).sum(1) for si in s) / len(s) - (mean**2).sum(1)
            maps.append((e - sc.err_stats[k, 0]) / sc.err_stats[k, 1] + (v - sc.var_stats[k, 0]) / sc.var_stats[k, 1])
        torch.testing.assert_close(got, (maps[0] + maps[1]) / 2, atol=1e-3, rtol=1e-4)


def test_dense_maps_use_dense_size_and_never_upsample():
    from adrt.train.students import StudentsScorer

    sc = StudentsScorer(tiny_cfg(scales=(17,), dense_size=32)).eval()
    with torch.no_grad():
        assert sc(torch.randn(1, 3, 64, 64))[0].shape == (1, 32, 32)      # 64 → 32 by 2×2 averaging
        assert sc(torch.randn(1, 3, 24, 24))[0].shape == (1, 24, 24)      # smaller input: left as it is


def test_correlation_loss_is_zero_for_decorrelated_and_high_for_copied_dimensions():
    from adrt.train.students.fit import correlation_loss

    q, _ = torch.linalg.qr(torch.randn(64, 8))      # orthonormal columns: uncorrelated once centred
    q = q - q.mean(0)
    q, _ = torch.linalg.qr(q)
    assert float(correlation_loss(q)) < 0.05
    a = torch.randn(64, 1)
    assert float(correlation_loss(a.repeat(1, 8) + 1e-3 * torch.randn(64, 8))) > 0.9


def test_teacher_losses_learn_on_patches(synth_data):
    """A few steps of KD + triplet + compactness lower the teacher objective on a fixed batch."""
    from adrt.train.students import PatchNet
    from adrt.train.students.fit import PretrainedDescriptor, make_bank, teacher_losses

    cfg = tiny_cfg()
    x = preprocess(torch.from_numpy(synth_images(synth_data, 6)))
    x = torch.nn.functional.pad(x, (8, 8, 8, 8), mode="reflect")
    g = torch.Generator().manual_seed(0)
    bank = make_bank(x, 17, 32, PretrainedDescriptor("lite0", 32).eval(), g, quiet)
    assert bank[3].shape == (32, 472) and torch.isfinite(bank[3]).all()
    torch.manual_seed(0)
    net, dec = PatchNet(17, 8, 16), torch.nn.Linear(16, 472)
    opt = torch.optim.Adam(list(net.parameters()) + list(dec.parameters()), lr=3e-3)
    idx = torch.arange(16)
    first = None
    for _ in range(25):
        loss, parts = teacher_losses(cfg, net, dec, x, bank, 17, idx, torch.Generator().manual_seed(1))
        first = first if first is not None else parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(parts) == {"loss", "kd", "triplet", "compact"}
    assert parts["loss"] < 0.8 * first["loss"] and parts["kd"] < first["kd"]


def test_fit_reproducible_with_seed_and_different_across_seeds(synth_data):
    from adrt.train.students.fit import fit_scorer

    imgs = synth_images(synth_data, 10)
    a = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=3, log=quiet))
    b = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=3, log=quiet))
    c = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=4, log=quiet))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ctrl_c_ends_the_stage_early_and_training_still_finishes(synth_data):
    from adrt.train.students.fit import fit_scorer

    lines = []
    log = _interrupting_log("teacher p=17 step 4/", 1)

    def both(msg="", end="\n"):
        lines.append(msg)
        log(msg, end)

    cfg = tiny_cfg(teacher_steps=40, teacher_batch=4)
    before = signal.getsignal(signal.SIGINT)     # default_int_handler, or SIG_IGN when run in the background
    sc = fit_scorer(cfg, synth_images(synth_data, 10), preprocess, seed=0, log=both)
    text = "\n".join(lines)
    assert "teacher p=17: stopped at step 4/40" in text and "stopped early: teacher p=17 at step 4/40" in text
    assert "teacher p=33 step 40/40" in text                    # the next stages ran in full
    assert signal.getsignal(signal.SIGINT) is before                        # handler restored
    with torch.no_grad():
        m, _ = sc(torch.randn(1, 3, SIZE, SIZE))
    assert torch.isfinite(m).all() and float(sc.err_stats[0, 1]) > 0      # a usable scorer


def test_abort_saves_a_checkpoint_and_resuming_gives_the_uninterrupted_weights(synth_data, tmp_path):
    from adrt.train.students.fit import fit_scorer

    imgs = synth_images(synth_data, 10)
    ck = tmp_path / "state.pt"
    reference = state(fit_scorer(tiny_cfg(), imgs, preprocess, seed=1, log=quiet))
    # Two Ctrl-C at once: abort in the middle of the students of p=17 (after a periodic save).
    with pytest.raises(KeyboardInterrupt):
        fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=1, log=_interrupting_log("students p=17 step 3/", 2))
    assert ck.is_file()
    saved = torch.load(ck, weights_only=True)
    assert saved["current"]["stage"] == "students p=17" and saved["current"]["step"] == 3
    lines = []
    resumed = fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=1,
                         log=lambda m="", end="\n": lines.append(m))
    assert any("resuming from" in ln for ln in lines) and any("resumed at step 3" in ln for ln in lines)
    assert not any("teacher p=17:" in ln for ln in lines)          # finished stages are not redone
    got = state(resumed)
    assert all(torch.equal(reference[k], got[k]) for k in reference), \
        [k for k in reference if not torch.equal(reference[k], got[k])]


def test_checkpoint_of_other_options_or_data_is_refused(synth_data, tmp_path):
    from adrt.train.students.fit import fit_scorer

    imgs = synth_images(synth_data, 10)
    ck = tmp_path / "state.pt"
    fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=0, log=quiet)
    with pytest.raises(AdrtError, match="differs in config.width"):
        fit_scorer(tiny_cfg(checkpoint=str(ck), width=4), imgs, preprocess, seed=0, log=quiet)
    with pytest.raises(AdrtError, match="differs in images"):
        fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs[:9], preprocess, seed=0, log=quiet)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(AdrtError, match="not a readable students checkpoint"):
        fit_scorer(tiny_cfg(checkpoint=str(ck)), imgs, preprocess, seed=0, log=quiet)


def test_too_few_images_for_the_validation_split_says_how_many(synth_data, tmp_path):
    from adrt.train.fit import train
    from adrt.train.students.fit import fit_scorer

    with pytest.raises(DataError, match=r"3 left to fit.*need at least 4 \(2 for validation"):
        fit_scorer(tiny_cfg(), synth_images(synth_data, 3), preprocess, log=quiet)
    # Through `adrt train`: 20 images, 4 held out for calibration, 16 to fit; min_val=15 needs 17.
    with pytest.raises(DataError, match="16 left to fit.*need at least 17"):
        train("students", synth_data, tmp_path / "run", size=SIZE, options={**TINY, "min_val": 15}, log=quiet)
    assert not (tmp_path / "run").exists()


def test_bad_options_are_refused():
    from adrt.train.fit import make_config
    from adrt.train.students import StudentsScorer

    with pytest.raises(AdrtError, match="scales=.*one of \\[17, 33, 65\\]"):
        StudentsScorer(make_config("students", {"scales": "17,21"}))
    with pytest.raises(AdrtError, match="at least 2"):
        StudentsScorer(make_config("students", {"n_students": "1"}))
    assert make_config("students", {"scales": "33"}).scales == (33,)


def test_single_scale_run_equals_that_scale_of_the_multi_scale_run(synth_data, tmp_path):
    from adrt.train.fit import load_run, train
    from adrt.train.students import single_scale

    run = train("students", synth_data, tmp_path / "ms", size=SIZE, options=TINY, log=quiet)
    det, _ = load_run(run)
    one = single_scale(run, 33, tmp_path / "p33")
    det33, meta33 = load_run(one)
    assert det33.scorer.scales == (33,) and meta33["training"]["derived_from"]["changed"] == {"scales": [33]}
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        xs = det.scorer.prepare(x)
        ref = det.scorer.scale_map(1, xs)
        got, _ = det33.scorer(x)
    torch.testing.assert_close(got, ref)
    with pytest.raises(AdrtError, match="not in the run's scales"):
        single_scale(run, 65, tmp_path / "p65")


def test_default_run_detects_and_localises_synthetic_defects(runs, synth_data):
    """The registry-wide default run (also exported and parity-checked in tests/export)."""
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, _ = runs("students")
    det, meta = load_run(run)
    (amap, score, raw_map, raw_score), labels, masks = score_test_split(det, synth_data)
    assert image_auroc(labels, raw_score.numpy()) > 0.9
    assert pixel_auroc(masks, raw_map.numpy()) > 0.85
    assert meta["calibration"]["score_threshold"] > meta["calibration"]["score_mean"]
