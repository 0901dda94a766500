"""The one trainer (adrt.train.trainer) under every trained method: Ctrl-C ends a stage early and
training still finishes; an abort saves a checkpoint, and resuming from it continues where it
stopped and ends with the weights of an uninterrupted run. (students and efficientad: their own
test modules.) Tiny networks on 32×32 images, a few steps each."""
from __future__ import annotations

import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adrt.errors import AdrtError  # noqa: E402
from adrt.train.fit import make_config  # noqa: E402
from adrt.train.registry import get_method  # noqa: E402
from adrt.train.trainer import check_size, epoch_steps, to_tensor  # noqa: E402

from tests.train.helpers import interrupting_log, one_thread, preprocess, quiet, state  # noqa: E402,F401

TINY = {
    "inpaint": dict(channels=(4, 8, 8), cells=(2, 4, 8), train_cells=(2, 4, 8), iterations=6, batch_size=4),
    "memae": dict(channels=(4, 8), mem_size=10, iterations=6, batch_size=4),
    "vae": dict(channels=(4, 8), latent_dim=3, iterations=6, batch_size=4, k_steps=2, mmd_ref_size=16),
}


def _images(n=8, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    return np.stack([np.clip(np.stack([yy * 4 + o, xx * 4 + o, (yy + xx) * 2 + o], -1)
                             + rng.normal(0, 3, (32, 32, 3)), 0, 255) for o in rng.integers(0, 60, n)]).astype(np.uint8)


def _fit(method, log=quiet, **kw):
    cfg = make_config(method, {**TINY[method], "checkpoint_every": 2, **kw})
    return get_method(method).fit(cfg, _images(), preprocess, seed=5, log=log)


@pytest.mark.parametrize("method", sorted(TINY))
def test_abort_then_resume_continues_where_it_stopped(method, tmp_path):
    ck = tmp_path / "state.pt"
    reference = state(_fit(method))
    with pytest.raises(KeyboardInterrupt):          # Ctrl-C twice: abort after step 3 (a save at step 2)
        _fit(method, log=interrupting_log("network step 3/", 2), checkpoint=str(ck))
    saved = torch.load(ck, weights_only=True)
    assert saved["current"]["stage"] == "network" and saved["current"]["step"] == 3
    assert "schedule" in saved["current"]           # the cosine schedule's state travels too
    lines = []
    got = state(_fit(method, log=lambda m="", end="\n": lines.append(m), checkpoint=str(ck)))
    assert any("resuming from" in ln for ln in lines) and any("resumed at step 3" in ln for ln in lines)
    assert not any("network step 2/" in ln for ln in lines)          # steps done are not redone
    assert all(torch.equal(reference[k], got[k]) for k in reference), \
        [k for k in reference if not torch.equal(reference[k], got[k])]
    # Finished: a rerun skips training altogether.
    lines.clear()
    again = state(_fit(method, log=lambda m="", end="\n": lines.append(m), checkpoint=str(ck)))
    assert not any("network step" in ln for ln in lines)
    assert all(torch.equal(reference[k], again[k]) for k in reference)


def test_ctrl_c_stops_the_stage_and_training_still_finishes():
    lines = []
    log = interrupting_log("network step 2/", 1)

    def both(msg="", end="\n"):
        lines.append(msg)
        log(msg, end)

    before = signal.getsignal(signal.SIGINT)
    sc = _fit("memae", log=both)
    text = "\n".join(lines)
    assert "network: stopped at step 2/6" in text and "stopped early: network at step 2/6" in text
    assert signal.getsignal(signal.SIGINT) is before
    with torch.no_grad():
        amap, score = sc(preprocess(torch.from_numpy(_images(2))))[:2]
    assert torch.isfinite(amap).all() and torch.isfinite(score).all()


def test_checkpoint_of_other_options_is_refused(tmp_path):
    ck = tmp_path / "state.pt"
    _fit("inpaint", checkpoint=str(ck))
    with pytest.raises(AdrtError, match=r"checkpoint of another training \(differs in config.lr\)"):
        _fit("inpaint", checkpoint=str(ck), lr=1e-4)
    with pytest.raises(AdrtError, match="vae option checkpoint_every=-1"):
        make_config("vae", {"checkpoint_every": -1})


def test_shared_helpers():
    assert epoch_steps(1000, 10, 16, 8) == 20 and epoch_steps(1000, 10, 17, 8) == 30 and epoch_steps(7, 10, 17, 8) == 7
    x = to_tensor(_images(3), preprocess, 16)
    assert x.shape == (3, 3, 16, 16)
    assert torch.allclose(x, torch.nn.functional.avg_pool2d(preprocess(torch.from_numpy(_images(3))), 2))
    check_size("m", 64, 32, 16)
    with pytest.raises(AdrtError, match=r"m: input size 48×40 is not a multiple of 16 .*sizes that work: 16, 32"):
        check_size("m", 48, 40, 16)
