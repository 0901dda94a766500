"""Real-data checks on ../shared/data (skipped where it is absent). Marked slow: about a minute each."""
from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA

BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"{BOTTLE} not present"),
]


@pytest.mark.parametrize("method, image_min, pixel_min", [
    ("patchcore", 0.99, 0.97),   # the foundation issue's targets
    ("padim", 0.98, 0.95),
])
def test_bottle_accuracy_through_the_exported_bundle(tmp_path, method, image_min, pixel_min):
    pytest.importorskip("torch")
    from adrt.evaluate import evaluate_session
    from adrt.export.pipeline import export_run
    from adrt.runtime import load
    from adrt.train.fit import train

    run = train(method, BOTTLE, tmp_path / "run", size=256, log=lambda *a, **k: None)
    bundle = export_run(run, tmp_path / "bundle", BOTTLE)
    with load(bundle) as s:
        res = evaluate_session(s, BOTTLE)
    o = res["overall"]
    assert o["image_auroc"] >= image_min and o["pixel_auroc"] >= pixel_min, o
