"""A real Triton Inference Server (the nvidia-pytriton wheel's tritonserver, Python backend) serving a
repository written by adrt triton: HTTP and gRPC, concurrent clients, bad requests, a new version."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from adrt.errors import ServingError
from adrt.triton.config import Form, ServeOptions
from adrt.triton.repository import parse_sources, write_repository

from tests.triton.helpers import reference_bundle

pytestmark = pytest.mark.triton

http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http,grpc]: pip install 'adrt[triton]'")
grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[http,grpc]: pip install 'adrt[triton]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = ("anomaly_map", "score", "raw_map", "raw_score")


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    """(server, {model: bundle}) for a python-form repository of a PaDiM bundle and a two-input
    bundle, with a 50 ms batching window so that requests sent together are batched together."""
    from adrt.triton.server import TritonServer, find_triton

    try:
        find_triton().stub_for("%d.%d" % sys.version_info[:2])
    except ServingError as e:
        pytest.skip(f"no tritonserver with a Python backend for this Python: {e}")
    root = tmp_path_factory.mktemp("triton")
    bundles = {"padim": runs("padim")[1], "ref": reference_bundle(root / "ref", size=16)}
    repo = root / "repo"
    write_repository(parse_sources([f"{k}={v}" for k, v in bundles.items()]), repo, Form.PYTHON,
                     ServeOptions(max_batch=8, max_queue_delay_us=50_000, threads=1))
    srv = TritonServer(repo, model_control="poll", poll_secs=1)
    srv.start(timeout=180)
    yield srv, bundles, repo
    srv.stop()
    assert not srv.alive()


def expected(bundle, feeds):
    import adrt.runtime as rt

    with rt.load(bundle, threads=1) as s:
        return s.backend.run(dict(feeds))


def infer(module, address, model, feeds):
    c = module.InferenceServerClient(address)
    try:
        inputs = []
        for name, arr in feeds.items():
            i = module.InferInput(name, list(arr.shape), "UINT8")
            i.set_data_from_numpy(arr)
            inputs.append(i)
        r = c.infer(model, inputs, outputs=[module.InferRequestedOutput(n) for n in OUTPUTS])
        return {n: r.as_numpy(n) for n in OUTPUTS}
    finally:
        c.close()


def assert_same(got, want):
    n = len(want["score"])
    assert got["anomaly_map"].shape == want["anomaly_map"].shape and got["score"].shape == (n, 1)
    for k in OUTPUTS:
        # The server runs the same ONNX Runtime on the same graph; a dynamically formed batch may
        # only reorder float sums.
        np.testing.assert_allclose(got[k].reshape(want[k].shape), want[k], rtol=1e-5, atol=1e-5)


def images(rng, n, size):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_http_and_grpc_match_the_python_runtime(served):
    srv, bundles, _ = served
    rng = np.random.default_rng(1)
    x = images(rng, 3, 64)
    want = expected(bundles["padim"], {"image": x})
    assert_same(infer(http, srv.http_address, "padim", {"image": x}), want)
    assert_same(infer(grpc, srv.grpc_address, "padim", {"image": x}), want)
    feeds = {"image": images(rng, 2, 16), "reference": images(rng, 2, 16)}
    assert_same(infer(grpc, srv.grpc_address, "ref", feeds), expected(bundles["ref"], feeds))


def test_concurrent_clients_are_batched_and_correct(served):
    srv, bundles, _ = served
    rng = np.random.default_rng(2)
    jobs = [(http if i % 2 else grpc, images(rng, 1 + i % 3, 64)) for i in range(8)]
    wants = [expected(bundles["padim"], {"image": x}) for _, x in jobs]
    stats = grpc.InferenceServerClient(srv.grpc_address)
    before = stats.get_inference_statistics("padim").model_stats[0]
    got, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def client(i, module, x):
        try:
            start.wait()
            got[i] = infer(module, srv.http_address if module is http else srv.grpc_address, "padim", {"image": x})
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i, m, x)) for i, (m, x) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for g, w in zip(got, wants):
        assert_same(g, w)
    after = stats.get_inference_statistics("padim").model_stats[0]
    stats.close()
    requests = after.inference_stats.success.count - before.inference_stats.success.count
    executions = after.execution_count - before.execution_count
    assert requests == len(jobs)
    assert executions < requests, "dynamic batching did not combine any concurrent requests"


def test_bad_requests_get_triton_errors_and_the_server_keeps_serving(served):
    srv, bundles, _ = served
    rng = np.random.default_rng(3)
    c = http.InferenceServerClient(srv.http_address)
    try:
        x = images(rng, 1, 64)
        wrong_dtype = http.InferInput("image", [1, 64, 64, 3], "FP32")
        wrong_dtype.set_data_from_numpy(x.astype(np.float32))
        with pytest.raises(InferenceServerException, match="data-type is 'FP32', but model 'padim' expects 'UINT8'"):
            c.infer("padim", [wrong_dtype])
        wrong_shape = http.InferInput("image", [1, 32, 64, 3], "UINT8")
        wrong_shape.set_data_from_numpy(x[:, :32])
        with pytest.raises(InferenceServerException, match="unexpected shape for input 'image'"):
            c.infer("padim", [wrong_shape])
        too_many = http.InferInput("image", [9, 64, 64, 3], "UINT8")
        too_many.set_data_from_numpy(np.zeros((9, 64, 64, 3), np.uint8))
        with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
            c.infer("padim", [too_many])
        missing = http.InferInput("image", [1, 16, 16, 3], "UINT8")
        missing.set_data_from_numpy(images(rng, 1, 16))
        with pytest.raises(InferenceServerException, match="reference"):
            c.infer("ref", [missing])
    finally:
        c.close()
    # A request the model refuses (NaN from the graph) gets the runtime's error, not a map.
    same = images(rng, 1, 16)
    with pytest.raises(InferenceServerException, match="NaN/Inf"):
        infer(grpc, srv.grpc_address, "ref", {"image": same, "reference": same.copy()})
    assert srv.alive()
    x = images(rng, 2, 64)
    assert_same(infer(http, srv.http_address, "padim", {"image": x}), expected(bundles["padim"], {"image": x}))


def test_a_new_version_rolls_in_under_polling(served):
    srv, bundles, repo = served
    write_repository(parse_sources([f"padim={bundles['padim']}"]), repo, add=True)
    srv.wait_model("padim", 2, timeout=60)
    c = http.InferenceServerClient(srv.http_address)
    try:
        # version_policy latest 1 (the default): version 2 serves, version 1 is unloaded.
        for _ in range(100):
            if not c.is_model_ready("padim", "1"):
                break
            threading.Event().wait(0.2)
        assert c.is_model_ready("padim", "2") and not c.is_model_ready("padim", "1")
        assert c.get_model_metadata("padim")["versions"] == ["2"]
    finally:
        c.close()
    x = images(np.random.default_rng(4), 1, 64)
    assert_same(infer(http, srv.http_address, "padim", {"image": x}), expected(bundles["padim"], {"image": x}))


def test_c_client_over_http(served, synth_data, tmp_path):
    """adrt/triton/client.c (the README's C client): KServe v2 HTTP with binary data, plain sockets."""
    import shutil
    import subprocess
    from pathlib import Path

    from PIL import Image

    import adrt.triton

    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc)")
    srv, bundles, _ = served
    exe = tmp_path / "triton_client"
    src = Path(adrt.triton.__file__).parent / "client.c"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    pngs = sorted((synth_data / "test").rglob("*.png"))[:4]
    ppms = []
    for p in pngs:
        ppms.append(tmp_path / f"{p.parent.name}_{p.stem}.ppm")
        Image.open(p).convert("RGB").save(ppms[-1])
    r = subprocess.run([str(exe), "127.0.0.1", str(srv.http_port), "padim", *map(str, ppms)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    import adrt.runtime as rt

    with rt.load(bundles["padim"], threads=1) as s:
        want = s.run_files(pngs)
    assert [row[0] for row in rows] == [str(p) for p in ppms]
    np.testing.assert_allclose([float(row[1]) for row in rows], want.scores, atol=1e-5)
    np.testing.assert_allclose([float(row[2]) for row in rows], want.maps.reshape(len(pngs), -1).max(1), atol=1e-5)
    assert 0.0 < want.scores.min() < 1.0 or 0.0 < want.scores.max() < 1.0  # not all saturated: a real check
    # A request Triton refuses: its error, exit status 1.
    Image.open(pngs[0]).convert("RGB").resize((32, 32)).save(tmp_path / "small.ppm")
    r = subprocess.run([str(exe), "127.0.0.1", str(srv.http_port), "padim", str(tmp_path / "small.ppm")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Triton answered 400" in r.stderr and "unexpected shape" in r.stderr
