"""Dataset folders (adrt.data): layouts, errors, image/mask loading, holdout split."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adrt import synth
from adrt.data import Dataset, Sample, load_images, load_masks, split_holdout
from adrt.errors import DataError, InputError


def _png(path: Path, h=12, w=16, value=100, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3) if mode == "RGB" else (h, w), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path, h=12, w=16, box=(2, 6, 3, 9)):
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return path


def _tree(root: Path):
    """A hand-made MVTec category: 3 train, 2 good test, crack (2, masks), hole (1, stem.png mask)."""
    for n in ("b.png", "a.png", "c.PNG"):
        _png(root / "train" / "good" / n)
    (root / "train" / "good" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / "good" / "readme.txt").write_text("ignore me")
    _png(root / "test" / "good" / "001.png")
    _png(root / "test" / "good" / "000.png")
    _png(root / "test" / "crack" / "001.png")
    _png(root / "test" / "crack" / "000.png")
    _mask(root / "ground_truth" / "crack" / "000_mask.png")
    _mask(root / "ground_truth" / "crack" / "001_mask.png")
    _png(root / "test" / "hole" / "000.png")
    _mask(root / "ground_truth" / "hole" / "000.png")  # fallback name
    return root


def test_open_mvtec_layout(tmp_path):
    ds = Dataset.open(_tree(tmp_path / "widget"))
    assert ds.name == "widget"
    assert [p.name for p in ds.train] == ["a.png", "b.png", "c.PNG"]
    assert [(s.defect_type, s.path.name, s.label) for s in ds.test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("hole", "000.png", 1),
    ]
    masks = {(s.defect_type, s.path.name): s.mask_path for s in ds.test}
    assert masks[("crack", "001.png")].name == "001_mask.png"
    assert masks[("hole", "000.png")].name == "000.png"
    assert masks[("good", "000.png")] is None
    assert ds.has_masks and ds.defect_types == ["crack", "hole"]
    assert isinstance(ds.test[0], Sample)


def test_load_images_and_masks(tmp_path):
    ds = Dataset.open(_tree(tmp_path / "widget"))
    x = load_images(ds.train, 6, 8)
    assert x.shape == (3, 6, 8, 3) and x.dtype == np.uint8 and (x == 100).all()
    assert load_images([], 6, 8).shape == (0, 6, 8, 3)
    m = load_masks(ds.test, 6, 8)
    assert m.shape == (5, 6, 8) and m.dtype == bool
    labels = np.array([s.label for s in ds.test])
    assert not m[labels == 0].any()
    assert m[labels == 1].reshape(3, -1).any(axis=1).all()


def test_defect_without_mask(tmp_path):
    root = _tree(tmp_path / "widget")
    _png(root / "test" / "crack" / "002.png")
    ds = Dataset.open(root)
    s = [s for s in ds.test if s.path.name == "002.png"][0]
    assert s.mask_path is None and s.label == 1
    assert not ds.has_masks
    assert load_masks(ds.test, 6, 8) is None
    assert load_masks([t for t in ds.test if t.mask_path is not None or t.label == 0], 6, 8) is not None


def test_mask_size_mismatch_names_mask(tmp_path):
    root = _tree(tmp_path / "widget")
    _mask(root / "ground_truth" / "crack" / "001_mask.png", h=10, w=16, box=(1, 3, 1, 3))
    ds = Dataset.open(root)
    with pytest.raises(DataError, match=r"001_mask\.png.*10x16.*12x16"):
        load_masks(ds.test, 6, 8)


def test_unreadable_image_named(tmp_path):
    root = _tree(tmp_path / "widget")
    (root / "train" / "good" / "d.png").write_text("not a png")
    ds = Dataset.open(root)
    with pytest.raises(DataError, match=r"d\.png"):
        load_images(ds.train, 6, 8)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such folder"):
        Dataset.open(tmp_path / "nowhere")


def test_file_instead_of_folder(tmp_path):
    f = _png(tmp_path / "one.png")
    with pytest.raises(DataError, match="not a folder"):
        Dataset.open(f)


@pytest.mark.parametrize("content", ["empty", "txt", "empty_train_good"])
def test_no_images(tmp_path, content):
    root = tmp_path / "cat"
    root.mkdir()
    if content == "txt":
        (root / "notes.txt").write_text("hello")
    if content == "empty_train_good":
        (root / "train" / "good").mkdir(parents=True)
        (root / "train" / "good" / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no images found in .*cat.*expected MVTec AD layout"):
        Dataset.open(root)


def test_folder_of_categories_hint(tmp_path):
    _tree(tmp_path / "mvtec" / "bottle")
    with pytest.raises(DataError, match="pass one of them: bottle"):
        Dataset.open(tmp_path / "mvtec")


def test_test_folder_without_images(tmp_path):
    root = tmp_path / "cat"
    _png(root / "train" / "good" / "a.png")
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "good" / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no images found in .*test"):
        Dataset.open(root)


def test_no_test_folder_is_fine(tmp_path):
    root = tmp_path / "cat"
    _png(root / "train" / "good" / "a.png")
    ds = Dataset.open(root)
    assert ds.test == [] and ds.has_masks and ds.defect_types == []


def test_plain_folder(tmp_path):
    root = tmp_path / "goods"
    for n in ("z.jpg", "a.bmp", "m.png"):
        _png(root / n)
    (root / "sub").mkdir()
    _png(root / "sub" / "deeper.png")  # subfolders are not searched
    (root / "list.csv").write_text("a,b")
    ds = Dataset.open(str(root))
    assert [p.name for p in ds.train] == ["a.bmp", "m.png", "z.jpg"]
    assert ds.test == [] and ds.name == "goods"


def test_synth_dataset_opens(tmp_path):
    root = synth.make_dataset(tmp_path / "s", size=32, n_train=4, n_test_good=2, n_test_defect=2)
    ds = Dataset.open(root)
    assert len(ds.train) == 4 and len(ds.test) == 4
    assert ds.defect_types == ["scratch", "spot"] and ds.has_masks
    m = load_masks(ds.test, 16, 16)
    assert m.shape == (4, 16, 16)


def test_split_holdout_deterministic(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(20)]
    fit, hold = split_holdout(paths, 0.25, 3, seed=1)
    assert len(hold) == 5 and len(fit) == 15
    assert sorted(fit + hold) == paths and not set(fit) & set(hold)
    assert fit == sorted(fit) and hold == sorted(hold)
    assert split_holdout(paths, 0.25, 3, seed=1) == (fit, hold)
    assert split_holdout(list(reversed(paths)), 0.25, 3, seed=1)[1] == list(reversed(hold))
    assert split_holdout(paths, 0.25, 3, seed=2)[1] != hold
    # min_holdout wins over a small fraction; the fit keeps at least one image
    assert len(split_holdout(paths, 0.0, 4, seed=0)[1]) == 4
    assert len(split_holdout(paths[:5], 0.9, 1, seed=0)[0]) == 1


def test_split_holdout_errors(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    with pytest.raises(DataError, match=r"found 3, need at least 4"):
        split_holdout(paths, 0.5, 3, seed=0)
    with pytest.raises(InputError, match="fraction"):
        split_holdout(paths, 1.5, 1, seed=0)
