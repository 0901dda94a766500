"""adrt.contract: the one place of the manifest schema (torch-free)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from adrt.contract import (Backend, Calibration, InputSpec, Manifest, Precision, check_graph_io, check_int,
                           check_relative_path)
from adrt.errors import BundleError, InputError


def test_the_contract_imports_nothing_heavy():
    code = ("import sys\nimport adrt.contract, adrt.outputs\n"
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'PIL', 'click', 'numpy') if m in sys.modules]\n"
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", ["model.onnx", "engines/a-b.plan", "a/b/c.onnx"])
def test_relative_names_inside_the_bundle_are_accepted(name):
    assert check_relative_path("f", name) == name


@pytest.mark.parametrize("name", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a\\b", "C:/x", "a\0b", 3, None])
def test_other_names_are_refused(name):
    with pytest.raises(BundleError, match="expected a relative file name inside the bundle"):
        check_relative_path("f", name)


def test_input_spec_checks_and_round_trips():
    spec = InputSpec(64, 48, mean=[0.1, 0.2, 0.3])
    assert spec.mean == (0.1, 0.2, 0.3) and InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_dict(spec.to_manifest(), manifest=True) == spec
    with pytest.raises(InputError, match="input: lacks 'dtype'"):
        InputSpec.from_dict(spec.to_dict(), manifest=True)
    with pytest.raises(InputError, match=r"input.height=0: expected an integer in \[1, 16384\]"):
        InputSpec(0, 1)
    with pytest.raises(InputError, match="input.resize='bicubic': expected one of bilinear"):
        InputSpec(8, 8, resize="bicubic")


def test_calibration_needs_finite_numbers_and_positive_scales():
    good = dict(n_images=4, score_mean=1.0, score_std=0.5, score_max=2.0, score_threshold=2.5, score_scale=0.5,
                map_mean=1.0, map_std=0.5, map_q999=2.0, map_threshold=2.5, map_scale=0.5, rule="r")
    assert Calibration.from_dict(good).to_dict() == good
    for key, bad in (("score_scale", 0.0), ("map_mean", float("inf")), ("n_images", 0), ("rule", 3)):
        with pytest.raises(InputError, match=f"calibration.{key}"):
            Calibration.from_dict({**good, key: bad})


def test_enums_are_strings():
    assert Precision("int8") is Precision.INT8 and Precision.FP16 == "fp16"
    assert Backend("ort-cpu") is Backend.ORT_CPU and Backend.TENSORRT.value == "tensorrt"


def test_check_int_takes_numpy_integers_and_refuses_bools_and_floats():
    import numpy as np

    assert check_int("n", np.int32(3), 1) == 3
    for bad in (True, 3.0, "3", np.float64(3)):
        with pytest.raises(InputError, match="n=.*: expected an integer"):
            check_int("n", bad, 1)


def test_graph_io_is_checked_against_the_spec():
    spec = InputSpec(64, 64)
    inputs = [("image", "uint8", ["batch", 64, 64, 3])]
    outputs = [("anomaly_map", "float32", ["b", 64, 64]), ("score", "float32", ["b"]),
               ("raw_map", "float32", [None, 64, 64]), ("raw_score", "float32", None)]
    check_graph_io(inputs, outputs, spec, "m")
    with pytest.raises(BundleError, match=r"m: graph outputs \['anomaly_map', 'raw_map', 'raw_score'\]"):
        check_graph_io(inputs, outputs[1:][::-1][:0] + outputs[:1] + outputs[2:], spec, "m")
    with pytest.raises(BundleError, match=r"output 'score' is float16 N; expected float32 N"):
        check_graph_io(inputs, [outputs[0], ("score", "float16", ["b"])] + outputs[2:], spec, "m")
    with pytest.raises(BundleError, match=r"input 'image' is uint8 N×3×64×64; the manifest says uint8 N×64×64×3"):
        check_graph_io([("image", "uint8", ["b", 3, 64, 64])], outputs, spec, "m")


def test_manifest_errors_name_the_file():
    with pytest.raises(BundleError, match=r"^where/manifest.json: not an adrt bundle manifest \(a JSON list"):
        Manifest.from_dict([], "where/manifest.json")


def _manifest(**extra) -> dict:
    return {"format": "adrt-bundle", "format_version": 1, "method": "reference",
            "input": InputSpec(8, 8).to_manifest(), "threshold": 0.5,
            "models": {"fp32": {"file": "model.onnx", "precision": "fp32"}},
            "files": {"model.onnx": {"sha256": "0" * 64, "bytes": 1}}, **extra}


def test_manifest_inputs_are_typed_and_default_to_the_image_alone():
    m = Manifest.from_dict(_manifest())
    assert m.inputs == ("image",) and not m.paired and "inputs" not in m.to_dict()      # absent stays absent
    assert Manifest.from_dict(_manifest(inputs=["image"])).to_dict()["inputs"] == ["image"]
    m = Manifest.from_dict(_manifest(inputs=["image", "reference"]))
    assert m.paired and Manifest.from_dict(m.to_dict()).inputs == ("image", "reference")
    for bad in (["reference", "image"], ["image", "image"], "image", [], ["image", "reference", "x"]):
        with pytest.raises(BundleError, match=r"manifest.json: inputs=.*expected \['image'\] or \['image', 'reference'\]"):
            Manifest.from_dict(_manifest(inputs=bad))


def test_graph_inputs_must_be_the_manifests():
    spec = InputSpec(64, 64)
    outputs = [("anomaly_map", "float32", ["b", 64, 64]), ("score", "float32", ["b"]),
               ("raw_map", "float32", ["b", 64, 64]), ("raw_score", "float32", ["b"])]
    one = [("image", "uint8", ["b", 64, 64, 3])]
    two = one + [("reference", "uint8", ["b", 64, 64, 3])]
    check_graph_io(two, outputs, spec, "m", ("image", "reference"))
    with pytest.raises(BundleError, match=r"m: graph inputs \['image'\]; the manifest's inputs are"):
        check_graph_io(one, outputs, spec, "m", ("image", "reference"))
    with pytest.raises(BundleError, match=r"graph inputs \['image', 'reference'\]; the manifest's inputs are \['image'\]"):
        check_graph_io(two, outputs, spec, "m", ("image",))
    with pytest.raises(BundleError, match=r"input 'reference' is uint8 N×32×64×3"):
        check_graph_io(one + [("reference", "uint8", ["b", 32, 64, 3])], outputs, spec, "m")
