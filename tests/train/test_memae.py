"""MemAE: memory addressing with hard shrinkage, entropy, the plain-AE switch, SSIM and MMD heads,
the trained detector on the synthetic set, derived runs, and bad options."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from adrt.errors import AdrtError  # noqa: E402
from adrt.train.generative.heads import ReconError, kernel, mmd2, ssim_error, _ssim_window  # noqa: E402
from adrt.train.memae import MemAEConfig, MemAENet, MemAEScorer, Memory, entropy  # noqa: E402

from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import one_thread, score_test_split  # noqa: E402,F401


def test_memory_addressing_is_softmax_cosine_with_hard_shrinkage():
    g = torch.Generator().manual_seed(0)
    n, dim, lam = 40, 8, 0.03
    mem = Memory(n, dim, lam)
    q = torch.randn(50, dim, generator=g)
    w = mem.address(q)
    # Reference: cosine similarities by explicit loops, softmax, keep w_i > λ, renormalise.
    cos = torch.tensor([[float(torch.dot(a, m) / (a.norm() * m.norm())) for m in mem.items.detach()] for a in q])
    soft = torch.softmax(cos, 1)
    keep = soft * (soft > lam)
    ref = keep / keep.sum(1, keepdim=True)
    assert torch.allclose(w, ref, atol=1e-5)
    assert torch.allclose(w.sum(1), torch.ones(50), atol=1e-5)
    assert (w == 0).any() and (w > 0).sum(1).min() >= 1          # shrinkage prunes, something survives
    # The read-out is the weighted sum of the items: inside their convex hull.
    z = torch.randn(2, dim, 3, 5, generator=g)
    zh, wt = mem(z)
    q2 = z.permute(0, 2, 3, 1).reshape(-1, dim)
    assert torch.allclose(zh.permute(0, 2, 3, 1).reshape(-1, dim), mem.address(q2) @ mem.items, atol=1e-5)
    assert wt.shape == (2 * 3 * 5, n)


def test_entropy_of_addressing_weights():
    n = 16
    assert math.isclose(float(entropy(torch.full((3, n), 1.0 / n))), math.log(n), rel_tol=1e-5)
    one_hot = F.one_hot(torch.tensor([0, 5]), n).float()
    assert float(entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)


def test_mem_size_zero_is_the_plain_autoencoder():
    torch.manual_seed(0)
    net = MemAENet(MemAEConfig(channels=(4, 8), mem_size=0)).eval()
    assert net.memory is None
    x = torch.randn(2, 3, 16, 16)
    rec, z, w = net(x)
    assert w is None and torch.equal(rec, net.decoder(net.encoder(x)))
    assert MemAENet(MemAEConfig(channels=(4, 8), mem_size=10)).memory.items.shape == (10, 8)


def test_ssim_error_is_zero_for_identical_images_and_matches_a_windowed_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 2, 20, 20, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(1, 2, 20, 20, generator=g)).clamp(-1, 1)
    assert float(ssim_error(a, a, _ssim_window()).abs().max()) < 1e-5
    got = ssim_error(a, b, _ssim_window())
    # Reference at one interior pixel: explicit 11×11 Gaussian-weighted statistics per channel.
    k = _ssim_window()
    w2 = k[:, None] * k[None, :]
    i, j, c1, c2 = 10, 9, (0.01 * 2) ** 2, (0.03 * 2) ** 2
    vals = []
    for ch in range(2):
        pa, pb = a[0, ch, i - 5 : i + 6, j - 5 : j + 6], b[0, ch, i - 5 : i + 6, j - 5 : j + 6]
        ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
        va, vb = (w2 * pa * pa).sum() - ma * ma, (w2 * pb * pb).sum() - mb * mb
        cov = (w2 * pa * pb).sum() - ma * mb
        vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    assert float(got[0, i, j]) == pytest.approx(1 - float(sum(vals)) / 2, abs=1e-5)
    assert float(ReconError("ssim")(a, b)[0, i, j]) == pytest.approx(float(got[0, i, j]), abs=1e-6)


@pytest.mark.parametrize("kind", ["imq", "rbf"])
def test_mmd2_matches_the_explicit_double_sums(kind):
    g = torch.Generator().manual_seed(2)
    s, r, c = torch.randn(3, 5, 4, generator=g), torch.randn(7, 4, generator=g) + 0.5, 6.0

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return c / (c + d2) if kind == "imq" else math.exp(-d2 / c)

    got = mmd2(s, r, kind, c)
    for n in range(3):
        kss = sum(k(a, b) for a in s[n] for b in s[n]) / 25
        krr = sum(k(a, b) for a in r for b in r) / 49
        ksr = sum(k(a, b) for a in s[n] for b in r) / 35
        assert float(got[n]) == pytest.approx(kss + krr - 2 * ksr, abs=1e-5)
    assert float(mmd2(r.unsqueeze(0), r, kind, c)[0]) == pytest.approx(0.0, abs=1e-5)   # same sample: 0
    assert float(kernel(torch.tensor(0.0), kind, c)) == 1.0


def test_trained_memae_localises_defects_and_keeps_its_memory_fixed(runs, synth_data):
    from adrt.metrics import image_auroc, pixel_auroc
    from adrt.train.fit import load_run

    run, _ = runs("memae")
    det, meta = load_run(run)
    assert meta["config"]["mem_size"] == 500 and det.scorer.mmd_ref.shape[0] > 0
    before = {k: v.clone() for k, v in det.state_dict().items()}
    (amap, score, raw_map, raw_score), labels, masks = score_test_split(det, synth_data)
    for k, v in det.state_dict().items():     # scoring changes nothing: the memory is fixed at test time
        assert torch.equal(v, before[k]), k
    assert torch.isfinite(raw_map).all() and torch.isfinite(raw_score).all()
    assert image_auroc(labels, raw_score.numpy()) > 0.9
    assert pixel_auroc(masks, raw_map.numpy()) > 0.85
    assert float(score[torch.from_numpy(labels == 0)].mean()) < 0.5


def test_derived_run_with_mmd_score_and_ssim_map_exports_and_matches(runs, synth_data, tmp_path):
    """The MMD head and the SSIM map in the graph: ONNX Runtime vs torch, and the recorded options."""
    import json

    import onnxruntime as ort

    from adrt.data import Dataset, load_images
    from adrt.export.pipeline import export_run
    from adrt.train.fit import load_run
    from adrt.train.generative import with_options

    run, _ = runs("memae")
    new = with_options(run, tmp_path / "mmd", score="mmd", error="ssim", mmd_kernel="rbf")
    det, meta = load_run(new)
    assert meta["config"]["score"] == "mmd" and meta["training"]["derived_from"]["changed"]["error"] == "ssim"
    bundle = export_run(new, tmp_path / "b", synth_data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["mmd_kernel"] == "rbf"
    ds = Dataset.open(synth_data)
    x = load_images([s.path for s in ds.test], SIZE, SIZE)
    got = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.inference_mode():
        ref = [t.numpy() for t in det(torch.from_numpy(x))]
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() <= 1e-4 * max(1.0, float(np.abs(r).max()))
    # The image score is the MMD² of the latent: recompute it outside the scorer.
    with torch.inference_mode():
        z = det.scorer.net.encoder(det.preprocess(torch.from_numpy(x))).flatten(1)
        c = det.scorer.mmd_c
        expect = 1.0 + kernel(torch.cdist(det.scorer.mmd_ref, det.scorer.mmd_ref) ** 2, "rbf", c).mean() \
            - 2 * kernel(torch.cdist(z, det.scorer.mmd_ref) ** 2, "rbf", c).mean(1)
    assert np.allclose(got[3], expect.numpy(), atol=1e-4)


def test_with_options_refuses_training_options(runs, tmp_path):
    from adrt.train.generative import with_options

    run, _ = runs("memae")
    with pytest.raises(AdrtError, match="mem_size cannot change without retraining; test-time options: error"):
        with_options(run, tmp_path / "x", mem_size=10)
    with pytest.raises(AdrtError, match="no option 'memory'"):
        with_options(run, tmp_path / "x", memory=0)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("option, value, match", [
    ("mem_size", "-1", "mem_size=-1: expected an integer >= 0"),
    ("error", "ms", "error='ms': expected one of l1, se, ssim"),
    ("score", "nll", "score='nll': expected one of recon, mmd"),
    ("shrink", "1.5", r"shrink=1.5: expected a number in \[0, 1\)"),
    ("channels", "0,4", "channels=.*integers >= 1"),
    ("mmd_kernel", "poly", "expected one of imq, rbf"),
])
def test_bad_options_are_refused_naming_the_option(option, value, match):
    from adrt.train.fit import make_config
    from adrt.train.registry import get_method

    # Refused when the config is made (before any data is read), naming the option.
    with pytest.raises(AdrtError, match=match):
        get_method("memae").build(make_config("memae", {option: value}))


def test_untileable_size_is_refused_before_fitting(synth_data, tmp_path):
    from adrt.train.fit import train

    lines = []
    with pytest.raises(AdrtError, match=r"40×40 is not a multiple of 16.*sizes that work: 16, 32, 48"):
        train("memae", synth_data, tmp_path / "run", size=40, log=lambda *a, **k: lines.append(a))
    assert not (tmp_path / "run").exists()
    assert not any("step" in str(a) for a in lines)
    with pytest.raises(AdrtError, match="not a multiple of 16"):
        MemAEScorer(MemAEConfig())(torch.zeros(1, 3, 40, 40))
