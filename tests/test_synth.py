"""The procedural dataset (adrt.synth): determinism, exact masks, layout."""
import time

import numpy as np
import pytest
from PIL import Image

from adrt import synth
from adrt.data import Dataset
from adrt.errors import InputError


def _arrays(root):
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def weave(tmp_path_factory):
    return synth.make_dataset(tmp_path_factory.mktemp("synth") / "weave", size=64, n_train=8, n_test_good=2, n_test_defect=6)


def test_layout(weave):
    files = _arrays(weave)
    assert "train/good/000.png" in files and "train/good/007.png" in files
    assert {k.split("/")[1] for k in files if k.startswith("test/")} == {"good", "scratch", "spot"}
    for kind in ("scratch", "spot"):
        for i in range(3):
            m = files[f"ground_truth/{kind}/{i:03d}_mask.png"]
            assert m.dtype == np.uint8 and m.shape == (64, 64)
            assert set(np.unique(m)) == {0, 255}
            assert files[f"test/{kind}/{i:03d}.png"].shape == (64, 64, 3)
    ds = Dataset.open(weave)
    assert len(ds.train) == 8 and ds.has_masks and ds.defect_types == ["scratch", "spot"]
    assert sum(s.label for s in ds.test) == 6


@pytest.mark.parametrize("texture", synth.TEXTURES)
def test_deterministic(tmp_path, texture):
    kw = dict(size=32, n_train=2, n_test_good=1, n_test_defect=2, texture=texture)
    a = _arrays(synth.make_dataset(tmp_path / "a", seed=3, **kw))
    b = _arrays(synth.make_dataset(tmp_path / "b", seed=3, **kw))
    c = _arrays(synth.make_dataset(tmp_path / "c", seed=4, **kw))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train/good/000.png"], c["train/good/000.png"])


def test_good_images_differ(weave):
    imgs = [np.asarray(Image.open(p)).astype(np.int16) for p in sorted((weave / "train" / "good").glob("*.png"))]
    for i in range(len(imgs) - 1):
        assert np.abs(imgs[i] - imgs[i + 1]).mean() > 5
    # a real texture, not a flat colour
    assert imgs[0].std(axis=(0, 1)).min() > 10


def test_masks_area_and_colour(weave):
    for kind in ("scratch", "spot"):
        for i in range(3):
            img = np.asarray(Image.open(weave / "test" / kind / f"{i:03d}.png")).astype(float)
            m = np.asarray(Image.open(weave / "ground_truth" / kind / f"{i:03d}_mask.png")) > 0
            assert 0.01 < m.mean() < 0.30, (kind, i, m.mean())
            inside, outside = img[m].mean(axis=0), img[~m].mean(axis=0)
            assert np.linalg.norm(inside - outside) > 40, (kind, i, inside, outside)


@pytest.mark.parametrize("texture", synth.TEXTURES)
@pytest.mark.parametrize("kind", synth.DEFECT_TYPES)
def test_mask_is_exactly_the_painted_pixels(texture, kind):
    for i in range(4):
        rng = np.random.default_rng([7, i])
        clean = synth.make_image(texture, 48, rng)
        img, mask = synth.paint_defect(clean, kind, rng)
        assert img.dtype == np.uint8 and mask.dtype == bool and mask.shape == (48, 48)
        changed = (img != clean).any(axis=2)
        np.testing.assert_array_equal(changed, mask)


def test_fast(tmp_path):
    t0 = time.perf_counter()
    synth.make_dataset(tmp_path / "f", size=64, n_train=28, n_test_good=6, n_test_defect=6)
    assert time.perf_counter() - t0 < 1.0


def test_refuses_non_empty_and_bad_args(tmp_path):
    from adrt.errors import OutputError

    root = tmp_path / "full"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    # A folder that is not a synthetic dataset made here is never replaced, with overwrite or not.
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="does not recognise as a synthetic dataset"):
            synth.make_dataset(root, n_train=1, n_test_good=0, n_test_defect=0, overwrite=overwrite)
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]
    made = synth.make_dataset(tmp_path / "s", size=16, n_train=2, n_test_good=0, n_test_defect=0)
    with pytest.raises(OutputError, match="pass --overwrite"):
        synth.make_dataset(made, size=16, n_train=1, n_test_good=0, n_test_defect=0)
    synth.make_dataset(made, size=16, n_train=1, n_test_good=0, n_test_defect=0, overwrite=True)
    assert sorted(p.name for p in (made / "train" / "good").iterdir()) == ["000.png"]
    with pytest.raises(InputError, match="texture='plaid'"):
        synth.make_dataset(tmp_path / "x", texture="plaid")
    with pytest.raises(InputError, match="size=8"):
        synth.make_dataset(tmp_path / "y", size=8)
