"""adrt triton: repositories and configs in all three forms, checked against Triton's ModelConfig
protobuf (tritonclient); no server here (test_server.py starts a real one)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from adrt.cli import main
from adrt.errors import BundleError, InputError, ServingError
from adrt.triton.config import Form, ServeOptions, check_schema, model_io, to_pbtxt
from adrt.triton.repository import (REPO_RECORD, check_repository, parse_sources, write_repository)

from tests.triton.helpers import reference_bundle, with_fake_engines


def schema():
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'adrt[triton]'")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def bundle(runs):
    return runs("padim")[1]


def config_of(repo, name):
    return check_schema((repo / name / "config.pbtxt").read_text(), name)


def test_python_form_layout_config_and_checksums(tmp_path, bundle):
    schema()
    repo = tmp_path / "repo"
    r = cli("triton", f"cam1={bundle}", "--out", repo, "--max-batch", 4, "--preferred-batch", 2,
            "--max-queue-delay-us", 500, "--instances", 2, "--threads", 1)
    assert r.exit_code == 0, r.output
    assert "cam1/1  python  padim  checksums ok" in r.output and "checked against tritonclient" in r.output
    v1 = repo / "cam1" / "1"
    # The version folder is the bundle itself plus model.py, so the runtime verifies it on load.
    listed = json.loads((bundle / "manifest.json").read_text())["files"]
    assert sorted(p.name for p in v1.iterdir()) == sorted(["adrt-triton.json", "manifest.json", "model.py", *listed])
    assert (v1 / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    c = config_of(repo, "cam1")
    assert c["name"] == "cam1" and c["backend"] == "python" and c["max_batch_size"] == 4
    assert c["input"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": ["64", "64", "3"]}]
    outs = {o["name"]: o for o in c["output"]}
    assert list(outs) == ["anomaly_map", "score", "raw_map", "raw_score"]
    assert outs["anomaly_map"]["dims"] == ["64", "64"] and outs["score"]["dims"] == ["1"]
    assert "shape" not in outs["score"]["reshape"]  # reshape { shape: [] }: batch-only tensor for the model
    assert c["dynamic_batching"] == {"preferred_batch_size": [2], "max_queue_delay_microseconds": "500"}
    assert c["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert {k: v["string_value"] for k, v in c["parameters"].items()} == {
        "adrt_backend": "ort-cpu", "adrt_precision": "fp32", "adrt_threads": "1"}
    rows = check_repository(repo)
    assert [(r["model"], r["version"], r["form"]) for r in rows] == [("cam1", 1, "python")]
    record = json.loads((repo / REPO_RECORD).read_text())
    assert record["models"]["cam1"]["versions"]["1"]["bundle"] == str(bundle.resolve())

    # A served file changed after writing is caught (bundle checksums travel with the model).
    with open(v1 / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match the sha256"):
        check_repository(repo)
    r = cli("triton-check", repo)
    assert r.exit_code == 1 and "does not match the sha256" in r.output and "Traceback" not in r.output


def test_onnxruntime_form_with_tensorrt_accelerator(tmp_path, bundle):
    schema()
    repo = tmp_path / "repo"
    opts = ServeOptions(ort_tensorrt=True, threads=2, dynamic_batching=False, kind="gpu", keep_versions=2)
    write_repository(parse_sources([str(bundle)]), repo, Form.ONNXRUNTIME, opts)
    name = bundle.name
    assert sorted(p.name for p in (repo / name / "1").iterdir()) == ["adrt-triton.json", "manifest.json", "model.onnx"]
    c = config_of(repo, name)
    assert c["platform"] == "onnxruntime_onnx" and c["default_model_filename"] == "model.onnx"
    assert "dynamic_batching" not in c and c["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert c["version_policy"] == {"latest": {"num_versions": 2}}
    acc = c["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert acc["name"] == "tensorrt"
    assert acc["parameters"] == {"precision_mode": "FP16", "trt_engine_cache_enable": "1",
                                 "trt_engine_cache_path": f"/tmp/adrt-trt-cache/{name}"}
    assert c["parameters"]["intra_op_thread_count"]["string_value"] == "2"
    assert check_repository(repo)[0]["files"] == 1
    with pytest.raises(BundleError, match="no 'fp16' model in this bundle; it has: fp32"):
        write_repository(parse_sources([str(bundle)]), tmp_path / "r2", Form.ONNXRUNTIME, ServeOptions(precision="fp16"))
    assert not (tmp_path / "r2").exists()


def test_tensorrt_plan_form_picks_one_target_and_refuses_mixing(tmp_path, bundle):
    schema()
    h200 = dict(gpu="NVIDIA H200", cc="9.0", tensorrt="10.3.0", precision="fp16")
    orin = dict(gpu="Orin", cc="8.7", tensorrt="8.6.2", precision="fp16")
    a = with_fake_engines(bundle, tmp_path / "a", [h200, orin, {**h200, "precision": "fp32"}])
    b = with_fake_engines(bundle, tmp_path / "b", [h200])
    c_only_orin = with_fake_engines(bundle, tmp_path / "c", [orin])
    repo = tmp_path / "repo"
    write_repository(parse_sources([str(a), str(b)]), repo, Form.TENSORRT, ServeOptions(precision="fp16"))
    for name in ("a", "b"):
        v1 = repo / name / "1"
        assert sorted(p.name for p in v1.iterdir()) == ["adrt-triton.json", "manifest.json", "model.plan"]
        assert (v1 / "model.plan").read_bytes() == b"not a real plan: nvidia-h200-sm90-trt10.3.0-fp16"
        rec = json.loads((v1 / "adrt-triton.json").read_text())
        assert rec["target"] == "nvidia-h200-sm90-trt10.3.0"
        assert rec["served"]["model.plan"]["bundle_file"] == "engines/nvidia-h200-sm90-trt10.3.0-fp16.plan"
        cfg = config_of(repo, name)
        assert cfg["platform"] == "tensorrt_plan" and cfg["default_model_filename"] == "model.plan"
        assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert len(check_repository(repo)) == 2

    # a has two fp16 targets: ambiguous alone; --target picks one; b and c share none.
    with pytest.raises(BundleError, match="more than one target.*--target"):
        write_repository(parse_sources([str(a)]), tmp_path / "r1", Form.TENSORRT, ServeOptions(precision="fp16"))
    write_repository(parse_sources([str(a)]), tmp_path / "r1", Form.TENSORRT,
                     ServeOptions(precision="fp16", target="orin-sm87-trt8.6.2"))
    assert (tmp_path / "r1" / "a" / "1" / "model.plan").read_bytes().endswith(b"orin-sm87-trt8.6.2-fp16")
    with pytest.raises(BundleError, match="no target common to all bundles.*mixing engine tags is refused"):
        write_repository(parse_sources([str(b), str(c_only_orin)]), tmp_path / "r2", Form.TENSORRT,
                         ServeOptions(precision="fp16"))
    with pytest.raises(BundleError, match="no fp16 engine for target 'orin-sm87-trt8.6.2'.*it has: nvidia-h200"):
        write_repository(parse_sources([str(b)]), tmp_path / "r2", Form.TENSORRT,
                         ServeOptions(precision="fp16", target="orin-sm87-trt8.6.2"))
    with pytest.raises(BundleError, match="no int8 TensorRT engine.*adrt build-engine"):
        write_repository(parse_sources([str(b)]), tmp_path / "r2", Form.TENSORRT, ServeOptions(precision="int8"))
    with pytest.raises(InputError, match="--max-batch 16 exceeds the largest batch.*8"):
        write_repository(parse_sources([str(b)]), tmp_path / "r2", Form.TENSORRT,
                         ServeOptions(precision="fp16", max_batch=16))
    d = with_fake_engines(bundle, tmp_path / "d", [{**h200, "profile": (2, 8)}])
    with pytest.raises(BundleError, match="profile starts at batch 2.*--min-batch 1"):
        write_repository(parse_sources([str(d)]), tmp_path / "r2", Form.TENSORRT, ServeOptions(precision="fp16"))
    with pytest.raises(InputError, match="a TensorRT plan runs on a GPU only"):
        write_repository(parse_sources([str(b)]), tmp_path / "r2", Form.TENSORRT, ServeOptions(kind="cpu"))
    assert not (tmp_path / "r2").exists()


def test_out_folder_rules_overwrite_and_add_versions(tmp_path, bundle, synth_data):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = cli("triton", bundle, "--out", foreign, "--overwrite")
    assert r.exit_code == 1 and "not written by adrt triton" in r.output
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("triton", f"m={bundle}", "--out", empty).exit_code == 0

    repo = tmp_path / "repo"
    assert cli("triton", f"m={bundle}", "--out", repo, "--instances", 3).exit_code == 0
    r = cli("triton", f"m={bundle}", "--out", repo)
    assert r.exit_code == 1 and "--overwrite replaces it, --add adds" in r.output
    config1 = (repo / "m" / "config.pbtxt").read_text()
    # --add: the next version, the model's config untouched (it is shared by every version).
    r = cli("triton", f"m={bundle}", f"n={bundle}", "--out", repo, "--add", "--instances", 1)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    assert (repo / "m" / "config.pbtxt").read_text() == config1 and (repo / "n" / "1").is_dir()
    assert [(x["model"], x["version"]) for x in check_repository(repo)] == [("m", 1), ("m", 2), ("n", 1)]
    r = cli("triton", f"m={bundle}", "--out", repo, "--add", "--version", 2)
    assert r.exit_code == 1 and "already has version 2" in r.output
    r = cli("triton", f"m={bundle}", "--out", repo, "--add", "--form", "onnxruntime")
    assert r.exit_code == 1 and "served as python, not onnxruntime" in r.output
    other = reference_bundle(tmp_path / "ref")
    with pytest.raises(ServingError, match="inputs/outputs .* versions of one model share one config"):
        write_repository(parse_sources([f"m={other}"]), repo, add=True)
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    # --overwrite replaces the whole repository.
    r = cli("triton", f"k={bundle}", "--out", repo, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == [REPO_RECORD, "k"]


def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path, bundle):
    out = tmp_path / "repo"
    cases = [
        (["--max-batch", 0], "--max-batch 0: expected >= 1"),
        (["--preferred-batch", 9], "--preferred-batch 9: expected 1..8"),
        (["--preferred-batch", 2, "--no-dynamic-batching"], "--preferred-batch needs dynamic batching"),
        (["--instances", 0], "--instances 0: expected >= 1"),
        (["--ort-tensorrt"], "--ort-tensorrt is an option of the onnxruntime form"),
        (["--max-queue-delay-us", -1], "--max-queue-delay-us -1: expected >= 0"),
    ]
    for args, match in cases:
        r = cli("triton", bundle, "--out", out, *args)
        assert r.exit_code == 1 and match in r.output and "Traceback" not in r.output, (args, r.output)
    r = cli("triton", tmp_path / "nope", "--out", out)
    assert r.exit_code == 1 and "no such bundle" in r.output
    r = cli("triton", f"a={bundle}", f"a={bundle}", "--out", out)
    assert r.exit_code == 1 and "two bundles would be served as model 'a'" in r.output
    r = cli("triton", f".x={bundle}", "--out", out)
    assert r.exit_code == 1 and "model name '.x'" in r.output
    # A bundle whose files fail their checksums is refused before anything is written.
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF      # same size, so the checksum is what catches it
    (bad / "model.onnx").write_bytes(bytes(data))
    r = cli("triton", bad, "--out", out)
    assert r.exit_code == 1 and "checksum mismatch" in r.output
    assert not out.exists() and not list(tmp_path.glob(".repo.*"))


def test_any_number_of_uint8_inputs(tmp_path):
    schema()
    b = reference_bundle(tmp_path / "ref", size=16)
    io = model_io(b / "model.onnx", json.loads((b / "manifest.json").read_text()))
    assert [(t.name, t.dims) for t in io.inputs] == [("image", (16, 16, 3)), ("reference", (16, 16, 3))]
    write_repository(parse_sources([str(b)]), tmp_path / "repo", Form.ONNXRUNTIME)
    c = config_of(tmp_path / "repo", "ref")
    assert [i["name"] for i in c["input"]] == ["image", "reference"]
    assert all(i["data_type"] == "TYPE_UINT8" and i["dims"] == ["16", "16", "3"] for i in c["input"])


def test_schema_check_names_the_problem():
    schema()
    with pytest.raises(ServingError, match="has no field named \"max_batch\""):
        check_schema('name: "m"\nbackend: "python"\nmax_batch: 8\n', "m/config.pbtxt")
    with pytest.raises(ServingError, match="TYPE_UINT9"):
        check_schema('backend: "python"\ninput [{ name: "x" data_type: TYPE_UINT9 dims: [1] }]', "m")
    with pytest.raises(ServingError, match="preferred_batch_size 16 outside 1..max_batch_size 8"):
        check_schema('backend: "python"\nmax_batch_size: 8\ndynamic_batching { preferred_batch_size: [16] }', "m")
    with pytest.raises(ServingError, match="tensor 's' has no dims"):
        check_schema('backend: "python"\nmax_batch_size: 8\noutput [{ name: "s" data_type: TYPE_FP32 }]', "m")
    # The text writer escapes what it quotes.
    text = to_pbtxt({"name": 'a"b\\c', "backend": "python"})
    assert check_schema(text, "m")["name"] == 'a"b\\c'


def test_writing_a_repository_does_not_import_torch(tmp_path, bundle):
    code = ("import sys\nfrom adrt.triton.repository import parse_sources, write_repository, check_repository\n"
            f"write_repository(parse_sources([{str(bundle)!r}]), {str(tmp_path / 'r')!r}, 'onnxruntime')\n"
            f"check_repository({str(tmp_path / 'r')!r})\nimport adrt.triton.python_model, adrt.triton.server\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the Python-backend model, without Triton (a stand-in for triton_python_backend_utils) ---------

class FakePb:
    class TritonError:
        def __init__(self, msg):
            self.msg = msg

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.tensors, self.error = {t.name: t.array for t in output_tensors}, error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return FakePb.Tensor(name, request[name])


def test_python_model_batches_requests_and_isolates_bad_ones(tmp_path):
    import adrt.runtime as rt
    from adrt.triton.python_model import BundleModel

    b = reference_bundle(tmp_path / "ref", size=8)
    write_repository(parse_sources([str(b)]), tmp_path / "repo", Form.PYTHON, ServeOptions(threads=1))
    cfg = check_schema((tmp_path / "repo" / "ref" / "config.pbtxt").read_text(), "ref") if _has_schema() else None

    class Model(BundleModel):
        pb = FakePb

    m = Model()
    model_config = cfg or {"input": [{"name": "image"}, {"name": "reference"}],
                           "output": [{"name": n} for n in ("anomaly_map", "score", "raw_map", "raw_score")],
                           "parameters": {"adrt_threads": {"string_value": "1"}}}
    m.initialize({"model_config": json.dumps(model_config), "model_repository": str(tmp_path / "repo" / "ref"),
                  "model_version": "1"})
    rng = np.random.default_rng(0)
    reqs = []
    for n in (1, 3, 2):
        img = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        reqs.append({"image": img, "reference": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)})
    same = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    bad = {"image": same, "reference": same.copy()}  # image == reference: the graph gives NaN
    responses = m.execute(reqs[:1] + [bad] + reqs[1:])
    assert [r.error is None for r in responses] == [True, False, True, True]
    assert "NaN/Inf" in responses[1].error.msg
    with rt.load(b, threads=1) as s:
        for req, resp in zip(reqs, [responses[0]] + responses[2:]):
            want = s.backend.run(dict(req))
            assert set(resp.tensors) == {"anomaly_map", "score", "raw_map", "raw_score"}
            for k, v in want.items():
                np.testing.assert_array_equal(resp.tensors[k], v)
    ok = m.execute(reqs)
    assert all(r.error is None for r in ok) and [len(r.tensors["score"]) for r in ok] == [1, 3, 2]
    m.finalize()


def _has_schema() -> bool:
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True
