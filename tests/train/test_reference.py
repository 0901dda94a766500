"""The reference method (change detection against a reference image): scoring, both ways of giving
references, the pair layouts and generator, parity of the two-input graph and its TensorRT rules."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adrt.errors import AdrtError, DataError, InputError  # noqa: E402
from tests.conftest import SIZE  # noqa: E402
from tests.train.helpers import one_thread  # noqa: E402,F401


def _scorer(**opts):
    from adrt.train.reference.model import ReferenceConfig, ReferenceScorer

    return ReferenceScorer(ReferenceConfig(**opts), pretrained=False)


def test_neighbourhood_minimum_tolerates_a_shift_within_the_radius():
    g = torch.randn(1, 8, 12, 12)
    f = torch.roll(g, shifts=(1, -1), dims=(2, 3))            # the image moved by one cell
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert float(_scorer(radius=1).distance(f, g)[inner].max()) < 1e-6
    assert float(_scorer(radius=0).distance(f, g)[inner].min()) > 0.1
    # A change is seen whatever the radius: one cell made different from every neighbour.
    f2 = f.clone()
    f2[0, :, 6, 6] += 10.0
    d = _scorer(radius=1).distance(f2, g)[0]
    assert float(d[6, 6]) > 5.0 and float(d[inner[1:]].flatten().kthvalue(d[inner[1:]].numel() - 1).values) < 1e-6


def test_global_alignment_search_finds_a_shift_beyond_the_radius():
    g = torch.randn(2, 8, 16, 16)
    f = torch.roll(g, shifts=(2, 2), dims=(2, 3))
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert float(_scorer(radius=0, align=0).distance(f, g)[inner].min()) > 0.1
    assert float(_scorer(radius=0, align=2).distance(f, g)[inner].max()) < 1e-6
    assert float(_scorer(radius=1, align=1).distance(f, g)[inner].max()) < 1e-6


def test_options_are_checked():
    from adrt.train.fit import make_config

    for bad in ({"radius": "-1"}, {"align": "9"}, {"stats": "median"}, {"finetune_lr": "0"}):
        with pytest.raises(AdrtError, match="reference option"):
            make_config("reference", bad)
    cfg = make_config("reference", {"golden": "g.png"})
    assert cfg.per_position and not make_config("reference").per_position


def test_per_image_references_two_input_graph_matches_torch(paired_run, pair_data):
    import adrt.runtime as rt
    from adrt.data import Dataset, load_images
    from adrt.runtime.pairs import find_references
    from adrt.train.fit import load_run

    run, bundle = paired_run
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["inputs"] == ["image", "reference"] and m["config"]["align"] == 1
    ds = Dataset.open(pair_data, references=True)
    paths = [s.path for s in ds.test]
    x = load_images(paths, SIZE, SIZE)
    r = load_images(find_references(paths), SIZE, SIZE)
    det, _ = load_run(run)
    with torch.inference_mode():
        ref = [t.numpy() for t in det(torch.from_numpy(x), torch.from_numpy(r))]
    with rt.load(bundle, threads=1) as s:
        assert s.paired
        got = s.run(x, references=r)
        by_file = s.run_files(paths)            # the references found by the layout
    for name, g, t in zip(("maps", "scores", "raw_maps", "raw_scores"), (got.maps, got.scores, got.raw_maps,
                                                                      got.raw_scores), ref):
        tol = 1e-4 * (float(np.abs(t).max()) if name.startswith("raw") else 1.0)
        assert np.abs(g - t).max() <= tol, name
    np.testing.assert_array_equal(by_file.raw_scores, got.raw_scores)
    # The reference matters: the same images against other references score differently.
    with rt.load(bundle, threads=1) as s:
        other = s.run(x, references=np.ascontiguousarray(r[::-1]))
    assert np.abs(other.raw_scores - got.raw_scores).max() > 1e-3


def test_two_input_bundle_passes_the_tensorrt_rules_and_its_opset17_copy_matches(paired_run):
    from adrt.export.trt_check import check_bundle, fatal_count, format_report

    _, bundle = paired_run
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["export"]["tensorrt_check"] == {"8.6": {"fp32.trt86": 0}, "10": {"fp32": 0}, "latest": {"fp32": 0}}
    report = check_bundle(bundle)
    assert fatal_count(report) == 0, format_report(report)
    import onnx

    for f in ("model.onnx", "model.trt86.onnx"):
        g = onnx.load(str(bundle / f)).graph
        assert [i.name for i in g.input] == ["image", "reference"]
        assert all(n.op_type != "MaxPool" for n in g.node)
    assert all(v["same_nan"] for v in m["models"]["fp32.trt86"]["parity_vs_source"].values())


def test_session_asks_for_references_and_refuses_them_where_none_are_taken(paired_run, runs, tmp_path):
    import adrt.runtime as rt

    x = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    with rt.load(paired_run[1]) as s:
        with pytest.raises(InputError, match="references=.*2×64×64×3"):
            s.run(x)
        with pytest.raises(InputError, match="one reference per image"):
            s.run(x, references=x[:1])
        with pytest.raises(InputError, match="references: expected uint8"):
            s.run(x, references=x.astype(np.float32))
        lone = tmp_path / "lone.png"
        from PIL import Image

        Image.fromarray(x[0]).save(lone)
        with pytest.raises(DataError, match="1 image.*without a reference.*lone.png"):
            s.run_files([lone])
        with pytest.raises(InputError, match="2 references for 1 images"):
            s.run_files([lone], references=[lone, lone])
        assert len(s.run_files([lone], references=[lone])) == 1
    # A golden reference baked into the graph: one input, as every other method.
    _, golden = runs("reference")
    assert json.loads((golden / "manifest.json").read_text())["inputs"] == ["image"]
    with rt.load(golden) as s:
        assert not s.paired and len(s.run(x)) == 2
        with pytest.raises(InputError, match="takes no reference images"):
            s.run(x, references=x)


def test_reference_layouts_and_missing_references(tmp_path):
    from PIL import Image

    from adrt.data import Dataset
    from adrt.runtime.pairs import find_references, is_reference, reference_for

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for rel in ("train/good/a.png", "train/good/b.png", "train/good/b_ref.png", "reference/train/good/a.jpg",
                "test/good/c.png", "test/good/c_ref.png", "test/crack/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / rel)
    root = tmp_path
    assert reference_for(root / "train/good/a.png") == root / "reference/train/good/a.jpg"   # any suffix
    assert reference_for(root / "train/good/b.png") == root / "train/good/b_ref.png"
    assert is_reference(root / "train/good/b_ref.png") and is_reference(root / "reference/train/good/a.jpg", root)
    assert not is_reference(root / "train/good/a.png", root)
    ds = Dataset.open(root, references=True)
    assert [p.name for p in ds.train] == ["a.png", "b.png"]
    assert [s.path.name for s in ds.test] == ["d.png", "c.png"]
    assert len(Dataset.open(root).train) == 3          # without references, *_ref files are images
    with pytest.raises(DataError, match=r"1 image\(s\) without a reference image: .*test/crack/d.png \(expected"):
        find_references([s.path for s in ds.test])


def test_pair_generator_is_deterministic_with_exact_masks(tmp_path):
    from adrt.data import Dataset, load_masks
    from adrt.runtime.image import read_image
    from adrt.synth_pairs import make_pairs

    a = make_pairs(tmp_path / "a", size=96, n_train=3, n_test_good=1, n_test_change=4, shift=3, seed=1)
    b = make_pairs(tmp_path / "b", size=96, n_train=3, n_test_good=1, n_test_change=4, shift=3, seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ds = Dataset.open(a, references=True)
    assert ds.defect_types == ["extra", "missing"] and ds.has_masks
    masks = load_masks(ds.test, 96, 96)
    assert all(m.sum() >= 4 for m, s in zip(masks, ds.test) if s.label)
    golden = read_image(a / "golden.png")
    assert all((read_image(a / "reference" / p.relative_to(a)) == golden).all() for p in (a / "train/good").iterdir())
    # Captures differ from the golden image (shift, gain, noise), by more than noise alone.
    assert np.abs(read_image(ds.train[0]).astype(int) - golden).mean() > 2.0
    with pytest.raises(InputError, match="shift"):
        make_pairs(tmp_path / "c", size=96, shift=50)


def test_cli_infer_pairs_each_image_and_names_those_without(paired_run, pair_data, tmp_path):
    import shutil

    from click.testing import CliRunner

    from adrt.cli import main

    # The reference/ mirror is found above the folders given; <stem>_ref files are not scored.
    side = tmp_path / "side"
    side.mkdir()
    shutil.copy(pair_data / "test/good/000.png", side / "x.png")
    shutil.copy(pair_data / "reference/test/good/000.png", side / "x_ref.png")
    args = ["infer", str(paired_run[1]), str(pair_data / "test"), str(pair_data / "train"), str(side)]
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    rows = [row.split(",") for row in (tmp_path / "s.csv").read_text().splitlines()[1:]]
    assert len(rows) == 6 + 10 + 1 and rows[-1][0].endswith("side/x.png")
    same = next(row for row in rows if row[0].endswith("test/good/000.png"))          # the same pair
    assert abs(float(rows[-1][3]) - float(same[3])) < 1e-4 * abs(float(same[3]))
    r = CliRunner().invoke(main, ["infer", str(paired_run[1]), str(pair_data / "ground_truth")])
    assert r.exit_code == 1 and "Error: 4 image(s) without a reference image:" in r.output
    assert "missing/000_mask.png" in r.output


def test_cli_eval_uses_the_references(paired_run, pair_data, tmp_path):
    from click.testing import CliRunner

    from adrt.cli import main

    r = CliRunner().invoke(main, ["eval", str(paired_run[1]), "--data", str(pair_data), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["data"]["n_test"] == 6 and m["data"]["pixel_metrics"]


def test_self_supervised_finetune_changes_only_the_tapped_blocks_and_exports(pair_data, tmp_path):
    from adrt.data import Dataset, load_images
    from adrt.export.pipeline import export_run
    from adrt.runtime.pairs import find_references
    from adrt.train.backbone import load_pretrained
    from adrt.train.fit import load_run, train
    from adrt.train.reference.finetune import cutpaste

    x = torch.zeros(3, 3, 64, 64)
    x[:, :, :, 32:] = 1.0
    pasted, mask = cutpaste(x, np.random.default_rng(0))
    changed = (pasted != x).any(1, keepdim=True)
    assert torch.equal(changed, mask.bool())              # the mask is exactly the changed pixels

    run = train("reference", pair_data, tmp_path / "run", size=SIZE, log=lambda *a, **k: None,
                options={"finetune_steps": 3, "finetune_lr": 1e-3})
    det, meta = load_run(run)
    assert meta["config"]["finetune_steps"] == 3
    tuned, ref = det.scorer.features.backbone, load_pretrained("lite0")
    last = max(det.scorer.features.taps)
    assert not torch.equal(tuned._blocks[last]._project_conv.weight, ref._blocks[last]._project_conv.weight)
    assert torch.equal(tuned._blocks[last + 1]._project_conv.weight, ref._blocks[last + 1]._project_conv.weight)
    assert not any(p.requires_grad for p in tuned.parameters())
    bundle = export_run(run, tmp_path / "bundle", pair_data)     # parity with ORT is checked at export
    import adrt.runtime as rt

    paths = [s.path for s in Dataset.open(pair_data, references=True).test]
    with rt.load(bundle) as s:
        r = s.run(load_images(paths, SIZE, SIZE), references=load_images(find_references(paths), SIZE, SIZE))
    assert np.isfinite(r.raw_scores).all()


def test_cli_synth_pairs(tmp_path):
    from click.testing import CliRunner

    from adrt.cli import main

    out = tmp_path / "p"
    args = ["synth", str(out), "--pairs", "--size", "64", "--train", "3", "--test-good", "1", "--test-defect", "2",
            "--designs", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert not (out / "golden.png").exists()          # two designs: no single golden image
    assert sorted(p.name for p in (out / "reference" / "test").iterdir()) == ["extra", "good", "missing"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert CliRunner().invoke(main, args + ["--overwrite"]).exit_code == 0
    r = CliRunner().invoke(main, args + ["--overwrite", "--shift", "9"])
    assert r.exit_code == 1 and r.output.startswith("Error: shift=9.0")
