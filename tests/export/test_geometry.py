"""Input geometry end to end: tiled bundles (every method exports one, the graph equals the untiled
model run tile by tile plus the blending rule, `adrt check` passes at every TensorRT target, Python
and C give the same map, a frame of the wrong size is a clear error), letterbox bundles, and
training on tiles read frame by frame."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SIZE, methods
from tests.train.helpers import one_thread, quiet  # noqa: F401

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from adrt.contract import Geometry  # noqa: E402
from adrt.runtime.geometry import cut_tiles, letterbox, stitch  # noqa: E402

FRAME = (64, 96)
TILED = Geometry("tile", tile=(32, 32), overlap=8)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, synth_data):
    """A PatchCore run trained on 32-px tiles of 64×96 frames, and its bundle."""
    from adrt.export.pipeline import export_run
    from adrt.train.fit import train

    root = tmp_path_factory.mktemp("tiled")
    run = train("patchcore", synth_data, root / "run", size=32, geometry=TILED, input_size=FRAME, log=quiet)
    return run, export_run(run, root / "bundle", synth_data)


def _frames(synth_data, n=3):
    from adrt.data import Dataset, load_images

    ds = Dataset.open(synth_data)
    return load_images([s.path for s in ds.test if s.label == 1][:n], *FRAME)


def test_tiled_bundle_records_its_geometry_and_passes_adrt_check(tiled):
    from adrt.export.trt_check import check_bundle, fatal_count

    _, bundle = tiled
    m = json.loads((bundle / "manifest.json").read_text())
    assert (m["input"]["height"], m["input"]["width"]) == FRAME
    assert m["geometry"] == {"mode": "tile", "tile": [32, 32], "overlap": 8, "blend": "linear",
                             "grid": {"rows": [0, 24, 32], "columns": [0, 24, 48, 64], "tiles": 12}}
    report = check_bundle(bundle, ("8.6", "10", "latest"))
    assert fatal_count(report) == 0 and set(report["8.6"]) == {"fp32.trt86"}
    assert m["export"]["tensorrt_check"] == {"8.6": {"fp32.trt86": 0}, "10": {"fp32": 0}, "latest": {"fp32": 0}}
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "check", str(bundle)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_tiled_bundle_equals_the_model_tile_by_tile_plus_blending(tiled, synth_data):
    import adrt.runtime as rt
    from adrt.train.detector import Detector
    from adrt.train.fit import load_run

    det, _ = load_run(tiled[0])
    single = Detector(det.scorer, det.spec.__class__(32, 32), sigma=det.blur.sigma).eval()
    frames = _frames(synth_data)
    with torch.inference_mode():
        m, _ = single.raw(torch.from_numpy(cut_tiles(frames, TILED)))
    ref_map = stitch(m.numpy(), TILED, *FRAME)
    ref_score = ref_map.reshape(len(frames), -1).max(1)          # the stitched map's maximum
    for backend_frames in (frames, frames[:1]):
        with rt.load(tiled[1], threads=1) as sess:
            r = sess.run(backend_frames)
        n = len(backend_frames)
        assert r.raw_maps.shape == (n, *FRAME) and r.scores.shape == (n,)
        np.testing.assert_allclose(r.raw_maps, ref_map[:n], rtol=1e-3, atol=1e-3 * np.abs(ref_map).max())
        np.testing.assert_allclose(r.raw_scores, ref_score[:n], rtol=1e-4)


def test_a_frame_of_the_wrong_size_is_a_clear_error(tiled):
    import adrt.runtime as rt
    from adrt.errors import InputError

    with rt.load(tiled[1], threads=1) as s:
        with pytest.raises(InputError, match=r"expected uint8 N×64×96×3 \(NHWC, RGB: the full frame of this tiled "
                                             r"bundle, fixed at export, cut in the graph into 3×4 tiles of 32×32\), "
                                             r"got uint8 1×96×64×3"):
            s.run(np.zeros((1, 96, 64, 3), np.uint8))


@pytest.fixture(scope="module")
def capi_dir(tmp_path_factory):
    pytest.importorskip("cffi")
    out = tmp_path_factory.mktemp("capi")
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "build-capi", "--out", str(out)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


@pytest.fixture(scope="module")
def letterboxed(runs, synth_data, tmp_path_factory):
    from adrt.export.pipeline import export_run

    g = Geometry("letterbox", pad_value=(114, 114, 114))
    return export_run(runs("patchcore")[0], tmp_path_factory.mktemp("lb") / "b", synth_data, geometry=g, trt86=False)


PREPARE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "adrt.h"
/* argv: bundle, raw file of h*w*c bytes, h, w, c; prints the prepared input's bytes to stdout's
   file argv[6] and the score. */
int main(int argc, char **argv) {
    adrt_handle det; int H, W, C; const char *msg;
    if (argc != 7) return 7;
    int h = atoi(argv[3]), w = atoi(argv[4]), c = atoi(argv[5]);
    size_t n = (size_t)h * w * c;
    uint8_t *src = malloc(n);
    FILE *f = fopen(argv[2], "rb");
    if (fread(src, 1, n, f) != n) return 9;
    fclose(f);
    if (adrt_open(argv[1], "ort-cpu", 1, &det) != ADRT_OK) { adrt_last_error(&msg); fprintf(stderr, "%s\n", msg); return 1; }
    adrt_input_size(det, &H, &W, &C);
    uint8_t *in = malloc((size_t)H * W * 3);
    if (adrt_prepare(det, in, 0, h, w, c, in, 1) == ADRT_OK) return 8;          /* wrong lengths: refused */
    adrt_last_error(&msg); printf("bad: %s\n", msg);
    if (adrt_prepare(det, src, n, h, w, c, in, (size_t)H * W * 3) != ADRT_OK) { adrt_last_error(&msg); fprintf(stderr, "%s\n", msg); return 2; }
    float score, *maps = malloc(sizeof(float) * H * W);
    if (adrt_run(det, in, (size_t)H * W * 3, 1, H, W, 3, maps, (size_t)H * W, &score, 1) != ADRT_OK) return 3;
    f = fopen(argv[6], "wb"); fwrite(in, 1, (size_t)H * W * 3, f); fclose(f);
    printf("score %.9g\n", score);
    return adrt_close(det);
}
"""


def test_c_prepare_letterboxes_as_python_does(capi_dir, letterboxed, tmp_path):
    import adrt.runtime as rt
    from tests.runtime.test_capi import compile_c, run_c

    exe = compile_c(capi_dir, "prepare", PREPARE_C)
    img = np.random.default_rng(1).integers(0, 256, (40, 100, 4), dtype=np.uint8)       # RGBA, wide
    (tmp_path / "img.raw").write_bytes(img.tobytes())
    p = run_c(exe, letterboxed, tmp_path / "img.raw", 40, 100, 4, tmp_path / "in.raw")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bad: adrt_prepare: image_len = 0; expected height*width*channels = 40*100*4 = 16000" in p.stdout
    with rt.load(letterboxed, threads=1) as s:
        ref = s.prepare(img)
        score = s.run(ref).scores[0]
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "in.raw").read_bytes(), np.uint8).reshape(ref.shape), ref)
    assert (ref[:12] == 114).all()                       # the padding above a 40×100 frame in 64×64
    assert f"score {score:.9g}" in p.stdout


def test_c_api_gives_the_python_map_for_a_tiled_bundle(capi_dir, tiled, synth_data, tmp_path):
    import adrt.runtime as rt
    from tests.runtime.test_capi import run_c, write_pnm

    out = capi_dir
    frames = _frames(synth_data)
    paths = [write_pnm(tmp_path / f"{i}.ppm", f) for i, f in enumerate(frames)]
    maps_file = tmp_path / "maps.f32"
    p = run_c(out / "adrt_example", "--threads", 1, "--batch", 3, "--maps", maps_file, tiled[1], *paths)
    assert p.returncode == 0, p.stderr
    assert f"input {FRAME[0]}x{FRAME[1]}x3" in p.stdout
    c_scores = np.array([float(ln.split("\t")[1]) for ln in p.stdout.splitlines() if not ln.startswith("#")],
                        np.float32)
    with rt.load(tiled[1], threads=1) as s:
        r = s.run(frames)
    np.testing.assert_array_equal(np.fromfile(maps_file, np.float32).reshape(len(frames), *FRAME), r.maps)
    np.testing.assert_array_equal(c_scores, r.scores)


@pytest.mark.parametrize("method", methods())
def test_every_method_exports_a_tiled_graph(method, runs, synth_data, tmp_path):
    """The method's eval forward on a tile batch, wrapped: ORT equals torch and the tile-by-tile
    reference, and the graph (and its opset-17 copy) is TensorRT-clean."""
    import onnx
    import onnxruntime as ort

    from adrt.export.onnx import export_onnx
    from adrt.export.trt86 import to_trt86
    from adrt.export.trt_check import check_model
    from adrt.train.fit import load_run, with_geometry

    det, meta = load_run(runs(method)[0])
    g = Geometry("tile", tile=(SIZE, SIZE), overlap=16)
    tiled, _ = with_geometry(det, meta, g, (SIZE, SIZE + 48), synth_data)
    assert tiled.tiling.n_tiles == 2 and tiled.scorer is det.scorer
    frames = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE + 48, 3), dtype=np.uint8)
    with torch.inference_mode():
        m_ref, _ = det.raw(torch.from_numpy(cut_tiles(frames, g)))
        m_t, s_t = tiled.raw(torch.from_numpy(frames))
    ref = stitch(m_ref.numpy(), g, SIZE, SIZE + 48)
    scale = max(1e-6, float(np.abs(ref).max()))
    np.testing.assert_allclose(m_t.numpy(), ref, atol=1e-4 * scale)
    np.testing.assert_allclose(s_t.numpy(), ref.reshape(2, -1).max(1), rtol=1e-4, atol=1e-4 * scale)
    path = export_onnx(tiled, tmp_path / "tiled.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": frames})
    np.testing.assert_allclose(got[2], ref, atol=2e-3 * scale)
    for target in ("10", "latest"):
        assert [v for v in check_model(path, target) if v.fatal] == []
    copy, _ = to_trt86(onnx.load(str(path)))
    assert [v for v in check_model(copy, "8.6") if v.fatal] == []


def test_letterbox_bundle_places_frames_and_masks_alike(letterboxed, synth_data, tmp_path):
    import adrt.runtime as rt
    from adrt.evaluate import evaluate_session
    from adrt.runtime.image import read_image

    g = Geometry("letterbox", pad_value=(114, 114, 114))
    bundle = letterboxed
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["geometry"] == {"mode": "letterbox", "pad_value": [114, 114, 114], "align": "center"}
    wide = np.concatenate([read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))[:2]], axis=1)
    from PIL import Image

    Image.fromarray(wide).save(tmp_path / "wide.png")
    with rt.load(bundle, threads=1) as s:
        assert s.geometry == g
        prepared = s.prepare(wide)
        assert (prepared[: SIZE // 4] == 114).all() and prepared.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(prepared, letterbox(wide, SIZE, SIZE, (114, 114, 114)))
        np.testing.assert_array_equal(s.run_files([tmp_path / "wide.png"]).raw_maps, s.run(prepared).raw_maps)
        result = evaluate_session(s, synth_data, log=quiet)
    assert result["overall"]["image_auroc"] > 0.5 and "pixel_auroc" in result["overall"]


def test_frame_tiles_are_the_graphs_tiles_read_frame_by_frame(synth_data):
    from adrt.contract import InputSpec
    from adrt.data import Dataset, load_images
    from adrt.train.fit import FrameTiles

    paths = Dataset.open(synth_data).train[:3]
    tiles = FrameTiles(paths, InputSpec(*FRAME), TILED)
    ref = cut_tiles(load_images(paths, *FRAME), TILED)
    assert len(tiles) == len(ref) == 36 and tiles.shape == ref.shape
    np.testing.assert_array_equal(tiles[5:17], ref[5:17])
    np.testing.assert_array_equal(tiles[30], ref[30])
    np.testing.assert_array_equal(np.asarray(tiles), ref)


def test_patch_sampling_streams_a_uniform_subset(synth_data):
    from adrt.train.features import TapFeatures, embed_images, sample_patches
    from tests.train.helpers import preprocess, synth_images

    feats = TapFeatures("lite0", (8,), 8, pretrained=False).eval()
    images = synth_images(synth_data, 6)
    full = embed_images(feats, preprocess, images)
    rows = full.permute(0, 2, 3, 1).reshape(-1, full.shape[1])
    every, seen = sample_patches(feats, preprocess, images, 0, batch_size=4)
    assert seen == rows.shape[0] and torch.equal(every, rows)
    some, seen = sample_patches(feats, preprocess, images, 50, batch_size=4, seed=3)
    assert some.shape == (50, rows.shape[1]) and seen == rows.shape[0]
    # Every sampled row is a real patch row, and the sample spans the batches.
    match = (some[:, None, :] == rows[None]).all(-1)
    assert match.any(1).all()
    per_image = match.float().argmax(1) // (rows.shape[0] // len(images))
    assert len(set(per_image.tolist())) > 2


def test_padim_streamed_moments_equal_the_batch_estimate():
    from adrt.train.padim.model import GaussianMoments, fit_gaussians

    g = torch.Generator().manual_seed(0)
    f = ((torch.randn(300, 3, 4, 6, generator=g) @ torch.randn(6, 6, generator=g)).permute(0, 3, 1, 2) * 2 + 5)
    moments = GaussianMoments()
    for i in range(0, 300, 64):
        moments.update(f[i : i + 64])
    ref = fit_gaussians(f)
    got = moments.finish()
    assert 0 < float(ref[2].max()) < 1                       # shrinkage estimated, not clamped
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--tile", "32"], "Error: --tile needs --input-size HEIGHTxWIDTH"),
    (["--tile", "32", "--input-size", "64x96", "--size", "64"], "Error: --size 64 and --tile 32"),
    (["--tile", "128", "--input-size", "64x96"], "Error: geometry.tile=[128, 128]: larger than the input 64×96"),
    (["--letterbox", "--tile", "32", "--input-size", "64x96"], "Error: --tile and --letterbox: choose one"),
    (["--overlap", "4"], "Error: --overlap goes with --tile"),
    (["--tile", "32", "--input-size", "64x96", "--overlap", "20"], "Error: geometry.overlap=20: expected at most half"),
])
def test_train_refuses_bad_geometry_before_reading_data(args, message, tmp_path):
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "train", "patchcore", "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "run"), *args], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(message), p.stderr
    assert not (tmp_path / "run").exists()


def test_export_refuses_a_tile_of_another_size_than_the_run(tiled, tmp_path):
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "export", str(tiled[0]), "--out", str(tmp_path / "b"),
                        "--tile", "48", "--input-size", "96x96"], capture_output=True, text=True)
    assert p.returncode == 1 and "Error: --tile 48x48: the run's model is 32x32" in p.stderr, p.stderr


def test_non_square_models_and_non_square_tiles(synth_data, tmp_path):
    """A non-square model (--input-size without --tile), then the same run tiled over a larger
    non-square frame: both exported, TensorRT-clean, and run on their full sizes."""
    import adrt.runtime as rt
    from adrt.export.pipeline import export_run
    from adrt.export.trt_check import check_bundle, fatal_count
    from adrt.train.fit import train

    run = train("padim", synth_data, tmp_path / "run", input_size=(48, 80), log=quiet)
    flat = export_run(run, tmp_path / "flat", synth_data)
    tiled = export_run(run, tmp_path / "tiled", synth_data, geometry=Geometry("tile", tile=(48, 80), overlap=16),
                       input_size=(80, 200))
    for bundle, size in ((flat, (48, 80)), (tiled, (80, 200))):
        assert fatal_count(check_bundle(bundle, ("8.6", "10", "latest"))) == 0
        with rt.load(bundle, threads=1) as s:
            assert (s.height, s.width) == size
            r = s.run(np.zeros((1, *size, 3), np.uint8))
            assert r.maps.shape == (1, *size)
    m = json.loads((tiled / "manifest.json").read_text())
    assert m["geometry"]["grid"] == {"rows": [0, 32], "columns": [0, 64, 120], "tiles": 6}
