"""Tiling inside the fused graph: the tiled detector equals the untiled one run tile by tile plus
the blending rule (numpy reference), in torch and through ONNX Runtime."""
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from adrt.contract import Geometry, InputSpec
from adrt.runtime.geometry import blend_weights, cut_tiles, stitch, tile_starts
from adrt.train.detector import Detector
from adrt.train.tiling import Tiling


class TinyScorer(nn.Module):
    """A patch map on a stride-4 grid that depends on the content and on the position in the tile
    (so a wrong tile offset or a wrong blend shows up), and an own image score (twice the map
    maximum: a tiled frame's score must be the stitched map's maximum instead)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        m = F.avg_pool2d(self.conv(x), 4)[:, 0]
        m = m + torch.linspace(0, 1, m.shape[-1])
        return m, m.flatten(1).amax(1) * 2.0


def _frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (64, 64, 0), (97, 40, 20), (130, 48, 0)])
def test_blend_weights_sum_to_one(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == size - tile
    w = blend_weights(size, tile, overlap)
    total = np.zeros(size)
    for s, row in zip(starts, w):
        total[s : s + tile] += row
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    assert (w > 0).all()


def test_linear_ramp_across_an_exact_overlap():
    w = blend_weights(56, 32, 8)                 # starts 0, 24: overlap exactly 8 pixels
    np.testing.assert_allclose(w[1][:8], (np.arange(8) + 0.5) / 8, rtol=1e-6)
    np.testing.assert_allclose(w[0][24:], 1 - (np.arange(8) + 0.5) / 8, rtol=1e-6)


def test_torch_tiling_matches_numpy_rule():
    g = Geometry("tile", tile=(32, 48), overlap=8)
    t = Tiling(g, 80, 130)
    frames = torch.from_numpy(_frames(2, 80, 130)).permute(0, 3, 1, 2).float()
    tiles = t.cut(frames)
    ref = cut_tiles(frames.permute(0, 2, 3, 1).numpy(), g)
    np.testing.assert_array_equal(tiles.permute(0, 2, 3, 1).numpy(), ref)
    maps = torch.rand(tiles.shape[0], 32, 48, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(t.stitch(maps).numpy(), stitch(maps.numpy(), g, 80, 130), rtol=1e-5, atol=1e-6)
    # Constant tiles stitch to the constant: the weights are a partition of unity.
    np.testing.assert_allclose(t.stitch(torch.full_like(maps, 3.0)).numpy(), 3.0, rtol=1e-6)


def _detectors(geometry, h, w):
    scorer = TinyScorer().eval()
    tiled = Detector(scorer, InputSpec(h, w), sigma=1.0, geometry=geometry).eval()
    single = Detector(scorer, InputSpec(*geometry.tile), sigma=1.0).eval()
    return tiled, single


def _reference(single, frames, geometry):
    tiles = cut_tiles(frames, geometry)
    with torch.inference_mode():
        m, _ = single.raw(torch.from_numpy(tiles))
    h, w = frames.shape[1:3]
    ref = stitch(m.numpy(), geometry, h, w)
    return ref, ref.reshape(len(frames), -1).max(1)


def test_tiled_detector_equals_tile_by_tile_plus_blend(tmp_path):
    g = Geometry("tile", tile=(32, 32), overlap=8)
    tiled, single = _detectors(g, 72, 100)
    frames = _frames(2, 72, 100)
    ref_map, ref_score = _reference(single, frames, g)
    with torch.inference_mode():
        m, s = tiled.raw(torch.from_numpy(frames))
    np.testing.assert_allclose(m.numpy(), ref_map, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), ref_score, rtol=1e-6)
    # The exported graph: same numbers on ONNX Runtime, one frame in, full-resolution map out.
    import onnxruntime as ort
    from adrt.export.onnx import export_onnx

    path = export_onnx(tiled, tmp_path / "tiled.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    amap, score, raw_map, raw_score = sess.run(None, {"image": frames})
    assert raw_map.shape == (2, 72, 100) and raw_score.shape == (2,)
    np.testing.assert_allclose(raw_map, ref_map, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(raw_score, ref_score, rtol=1e-5)


def test_blending_differs_from_plain_overwrite():
    # A test that would pass with any blend is no test: the blended map is not the last tile's.
    g = Geometry("tile", tile=(32, 32), overlap=16)
    maps = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)      # 2×2 tiles over 48×48
    out = stitch(maps, g, 48, 48)
    assert not np.allclose(out[0, 16:32, 16:32], maps[3, :16, :16])
    assert np.allclose(out[0, :16, :16], maps[0, :16, :16])                      # covered once: the tile itself
