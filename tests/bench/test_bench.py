"""adrt bench: FLOP counting, statistics, the interleaved multi-configuration run, reports, --compare.

Timings are never asserted on (the machine is shared); only structure and consistency are.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from adrt.errors import AdrtError, BackendError, InputError
from adrt.bench.harness import bench, bench_many, stats_ms
from adrt.bench.plan import pair_torch_runs, parse_frame, split_runs
from adrt.bench.report import BenchReportError, compare, load_report, write_report
from adrt.bench.report_md import compare_markdown, to_markdown

from tests.conftest import SIZE

QUICK = dict(runs=3, warmup=1, rounds=3, batch=2)


def cli(*args):
    from adrt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------------------------- FLOPs


def _tiny_model():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),            # N×6×10×10
        helper.make_node("Relu", ["c1"], ["y1"]),
        helper.make_node("Conv", ["x2", "w2"], ["y2"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),  # N×4×4×4
        helper.make_node("MatMul", ["a", "w3"], ["y3"]),                                   # N×16×4
        helper.make_node("Reshape", ["y3", "shape"], ["y4"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2", "y4")],
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 4, 2, 3, 3), init("w3", 8, 4),
         numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_flops_of_hand_built_graph_match_hand_count(tmp_path):
    from adrt.bench.flops import count

    model = _tiny_model()
    conv1 = 2 * (6 * 10 * 10) * (3 * 3 * 3)       # 2 × outputs × (C_in/group × kernel)
    relu = 6 * 10 * 10
    conv2 = 2 * (4 * 4 * 4) * (2 * 3 * 3)         # grouped (2 groups of 2 channels), stride 2
    matmul = 2 * (16 * 4) * 8
    r = count(model)
    assert r["by_op"] == {"Conv": conv1 + conv2, "MatMul": matmul, "Relu": relu}
    assert r["flops"] == conv1 + conv2 + matmul + relu and r["matmul_flops"] == conv1 + conv2 + matmul
    assert r["params"] == 6 * 27 + 6 + 4 * 18 + 8 * 4          # the int64 shape constant is not a parameter
    assert r["unknown_shapes"] == {}
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    assert count(path, batch=3)["flops"] == 3 * r["flops"]


def test_flops_without_onnx_give_null_and_reason(monkeypatch, tmp_path):
    from adrt.bench.flops import count

    monkeypatch.setitem(sys.modules, "onnx", None)     # import onnx now raises ImportError
    r = count(tmp_path / "model.onnx")
    assert r["flops"] is None and r["params"] is None and "onnx" in r["reason"]


def test_flops_of_exported_bundle_resolve_every_shape(runs):
    pytest.importorskip("onnx")
    from adrt.bench.flops import count

    _, b = runs("padim")
    r = count(b / "model.onnx")
    assert r["unknown_shapes"] == {} and r["params"] > 0
    assert 0 < r["matmul_flops"] <= r["flops"] == sum(r["by_op"].values())


# --------------------------------------------------------------------------------------------- pieces


def test_stats_are_consistent_and_runs_split_exactly():
    t = np.random.default_rng(0).gamma(2.0, 0.01, 200)
    s = stats_ms(t)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"] and s["min"] <= s["mean"] <= s["max"]
    assert s["runs"] == 200 and s["std"] > 0 and s["iqr"] > 0 and s["mean"] == pytest.approx(t.mean() * 1e3)
    assert split_runs(3, 5) == [1, 1, 1] and split_runs(7, 3) == [3, 2, 2] and sum(split_runs(50, 5)) == 50


def test_frame_and_torch_run_options(tmp_path):
    assert parse_frame("480x640") == (480, 640) and parse_frame("1080×1920") == (1080, 1920)
    with pytest.raises(InputError, match="HEIGHTxWIDTH"):
        parse_frame("640")
    a, b = tmp_path / "pc_bundle", tmp_path / "padim_bundle"
    assert {k: v.as_posix() for k, v in pair_torch_runs([a], ["runs/pc"]).items()} == {a: "runs/pc"}
    got = pair_torch_runs([a, b], ["padim_bundle=r/padim", f"{a}=r/pc"])
    assert {k.name: v.as_posix() for k, v in got.items()} == {"padim_bundle": "r/padim", "pc_bundle": "r/pc"}
    with pytest.raises(InputError, match="BUNDLE=RUN"):
        pair_torch_runs([a, b], ["r/pc"])
    with pytest.raises(InputError, match="two run folders"):
        pair_torch_runs([a, b], ["pc_bundle=r/1", "pc_bundle=r/2"])


# --------------------------------------------------------------------------------------------- the run


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def report(runs):
    """Two bundles × (ORT CPU, ORT CUDA) × 1 thread, plus torch eager for PatchCore, interleaved."""
    pc_run, pc = runs("patchcore")
    _, pd = runs("padim")
    return bench_many([pd, pc], ["ort-cpu", "ort-cuda"], [1], {pc: pc_run}, profile_runs=2, log=None, **QUICK)


def test_report_has_one_entry_per_configuration_in_order(report, runs):
    assert report["format"] == "adrt-bench" and report["format_version"] == 1
    assert [(e["method"], e["backend"]) for e in report["results"]] == [
        ("padim", "ort-cpu"), ("padim", "ort-cuda"), ("patchcore", "ort-cpu"), ("patchcore", "ort-cuda"),
        ("patchcore", "torch-eager")]
    m = report["machine"]
    assert m["cpus"] >= 1 and m["onnxruntime"] and m["numpy"] and "gpus" in m   # a GPU backend was asked for
    assert report["settings"]["runs"] == 3 and report["settings"]["rounds"] == 3
    assert [b["method"] for b in report["bundles"]] == ["padim", "patchcore"]


def test_unavailable_backend_is_skipped_with_reason(report):
    cuda = [e for e in report["results"] if e["backend"] == "ort-cuda"]
    if _cuda_available():
        assert all(e["status"] == "ok" for e in cuda)
    else:
        assert all(e["status"] == "skipped" and "CUDAExecutionProvider" in e["reason"] for e in cuda)
        assert "## Skipped or failed" in to_markdown(report)
    assert all(e["status"] == "ok" for e in report["results"] if e["backend"] != "ort-cuda")


def test_runs_were_interleaved_round_robin(report):
    live = [e["key"] for e in report["results"] if e["status"] == "ok"]
    sched = report["schedule"]
    assert len(sched) == 3
    for r, order in enumerate(sched):
        assert sorted(order) == sorted(live)
        k = r % len(live)
        assert order == live[k:] + live[:k]      # every round visits all, starting one further on


def test_entries_are_consistent(report):
    flops = {b["path"]: b["flops"] for b in report["bundles"]}
    for e in (x for x in report["results"] if x["status"] == "ok"):
        lat = e["latency_ms"]
        assert lat["runs"] == 3 == len(e["samples_ms"]) and len(e["round_means_ms"]) == 3
        assert lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] and lat["min"] <= lat["mean"]
        assert min(e["samples_ms"]) == pytest.approx(lat["min"], abs=1e-3)
        assert e["prepare_ms"]["frame"] == [480, 640] and e["prepare_ms"]["runs"] == 3
        assert e["throughput"]["batch"] == 2 and e["throughput"]["images_per_s"] > 0
        assert e["size"] == [SIZE, SIZE] and e["peak_rss_mb"] >= e["base_rss_mb"] > 0
        assert e["peak_rss_batch_mb"] >= e["peak_rss_mb"]
        # Batch 1 is timed before the process has run any larger batch (that changes what batch 1
        # costs: glibc's mmap threshold, allocator arenas); throughput is timed afterwards.
        assert e["largest_batch_before_batch1"] == 1
        assert set(e["page_faults_per_run"]) == {"lat", "batch", "prep"}
        assert all(v >= 0 for v in e["page_faults_per_run"].values())
        f = flops[e["bundle"]]
        if f.get("flops"):
            assert e["gflops_per_image"] == pytest.approx(f["flops"] / 1e9)
            assert e["achieved_gflops"] == pytest.approx(f["flops"] / lat["mean"] * 1e3 / 1e9)
            if e["backend"] in ("ort-cpu", "torch-eager"):
                g = report["gemm"]["1"]["gflops"]
                assert g > 0 and e["gemm_fraction"] == pytest.approx(e["achieved_gflops"] / g)
        if e["backend"] == "ort-cpu":
            g = e["graph_ms"]
            assert g["runs"] == 2 and all(g[k] >= 0 for k in ("host", "ort_overhead", "pre", "model", "post"))
            assert g["pre"] > 0 and g["model"] > 0 and g["post"] > 0    # both split points were found
        if e["backend"] == "torch-eager":
            assert e["graph_ms"] is None and e["graph_reason"] and e["torch"]
    pc = next(e for e in report["results"] if e["method"] == "patchcore" and e["backend"] == "ort-cpu")
    torch = next(e for e in report["results"] if e["backend"] == "torch-eager")
    assert pc["speedup_vs_torch"] == pytest.approx(torch["latency_ms"]["mean"] / pc["latency_ms"]["mean"])


def test_reports_are_written_and_read_back(report, tmp_path):
    paths = write_report(report, tmp_path / "out" / "bench")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.html"] and all(p.is_file() for p in paths)
    assert load_report(paths[0])["results"] == json.loads(json.dumps(report["results"]))
    md = paths[1].read_text()
    assert "| padim | ort-cpu | 1 |" in md and "| patchcore | torch-eager | 1 |" in md and "GEMM reference" in md
    assert "| page faults |" in md and "timed after all batch-1 runs" in md
    page = paths[2].read_text()
    assert page.count("<svg") == 3 and "Accuracy vs latency" not in page    # no eval results in these bundles
    assert "patchcore · torch-eager" in page and "<table>" in page


def test_accuracy_plot_when_manifests_hold_metrics(report):
    from adrt.bench.report_html import to_html

    fake = copy.deepcopy(report)
    for i, e in enumerate(x for x in fake["results"] if x["status"] == "ok"):
        e["accuracy"] = {"weave": 0.9 + 0.02 * i}
    page = to_html(fake)
    assert "Accuracy vs latency" in page and page.count("<svg") == 4 and "AUROC 0.900" in page


def test_legacy_single_bundle_call_keeps_its_shape(runs):
    _, b = runs("padim")
    rep = bench(b, runs=2, warmup=0, batch=2, gemm=False, profile_runs=0, log=None)
    r0 = rep["results"][0]
    assert len(rep["results"]) == 1 and r0["backend"] == "ort-cpu" and r0["latency_ms"]["runs"] == 2
    assert r0["peak_rss_mb"] > 0 and rep["bundle"] == str(b) and "speedup_vs_torch" not in rep
    if "TensorrtExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(BackendError, match="skipped: backend ort-trt needs TensorrtExecutionProvider"):
            bench(b, backend="ort-trt", runs=1, warmup=0, gemm=False, profile_runs=0, log=None)


def test_missing_precision_variant_is_skipped_not_fatal(runs):
    _, b = runs("padim")
    rep = bench_many([b], precisions=["fp32", "int8"], runs=1, warmup=0, rounds=1, gemm=False, profile_runs=0,
                     log=None)
    fp32, int8 = rep["results"]
    assert fp32["status"] == "ok" and fp32["key"].endswith("|ort-cpu|fp32|default")
    assert int8["status"] == "skipped" and "no 'int8' model" in int8["reason"] and int8["name"] == "padim ort-cpu int8"
    assert "| padim | ort-cpu | default |" in to_markdown(rep)


# --------------------------------------------------------------------------------------------- compare


def _slowed(report: dict, factor: float) -> dict:
    r = copy.deepcopy(report)
    for e in r["results"]:
        if e["status"] == "ok":
            for k in ("mean", "p50", "p99"):
                e["latency_ms"][k] *= factor
            e["throughput"]["images_per_s"] /= factor
    return r


def test_compare_flags_a_two_times_slower_run(report):
    ok = [e for e in report["results"] if e["status"] == "ok"]
    c = compare(_slowed(report, 2.0), report, threshold=0.10)
    assert c["regressions"] == len(ok) == len(c["rows"]) and all(r["regression"] for r in c["rows"])
    assert all(r["mean_ratio"] == pytest.approx(2.0) and r["throughput_ratio"] == pytest.approx(0.5) for r in c["rows"])
    c = compare(_slowed(report, 1.05), report, threshold=0.10)
    assert c["regressions"] == 0 and not c["new_only"] and not c["old_only"]
    c = compare(_slowed(report, 0.5), report)                     # faster is not a regression
    assert c["regressions"] == 0 and c["same_protocol"]
    assert "another protocol" not in compare_markdown(c)


def test_compare_says_when_the_earlier_report_used_another_protocol(report):
    old = copy.deepcopy(report)
    old["settings"]["protocol"] = "batch 1 timed after batch-8 runs in the same process"
    c = compare(report, old)
    assert not c["same_protocol"] and "timed under another protocol" in compare_markdown(c)


@pytest.mark.parametrize("content, match", [
    ("not json", "not a JSON file"),
    ('[1, 2]', "not an adrt bench report"),
    ('{"format": "adrt-bundle", "format_version": 1}', "format 'adrt-bundle', expected 'adrt-bench'"),
    ('{"results": []}', "no \"format\" key"),
    ('{"format": "adrt-bench", "format_version": 7, "results": []}', "format version 7"),
])
def test_compare_file_of_another_format_is_a_clear_error(tmp_path, content, match):
    p = tmp_path / "old.json"
    p.write_text(content)
    with pytest.raises(BenchReportError, match=match):
        load_report(p)
    assert issubclass(BenchReportError, AdrtError)


def test_cli_compare_flags_regressions_and_fails_only_when_asked(runs, tmp_path):
    _, b = runs("padim")
    fast = ["--runs", 2, "--warmup", 0, "--rounds", 1, "--batch", 2, "--no-gemm", "--profile-runs", 0, "--no-torch"]
    r = cli("bench", b, *fast, "--out", tmp_path / "now")
    assert r.exit_code == 0, r.output
    now = json.loads((tmp_path / "now.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps(_slowed(now, 1 / 3)))     # the earlier run was 3× faster
    r = cli("bench", b, *fast, "--compare", tmp_path / "old.json", "--out", tmp_path / "cmp")
    assert r.exit_code == 0 and "REGRESSION" in r.output
    assert json.loads((tmp_path / "cmp.json").read_text())["compare"]["regressions"] == 1
    assert 'class="bad"' in (tmp_path / "cmp.html").read_text()
    r = cli("bench", b, *fast, "--compare", tmp_path / "old.json", "--fail-on-regression")
    assert r.exit_code == 1 and "1 regression(s)" in r.output
    (tmp_path / "manifest.json").write_text((b / "manifest.json").read_text())
    r = cli("bench", b, *fast, "--compare", tmp_path / "manifest.json")
    assert r.exit_code == 1 and "not an adrt bench report (format 'adrt-bundle'" in r.output


def test_bench_without_torch_run_does_not_import_torch(runs, tmp_path):
    _, b = runs("padim")
    code = ("import sys\nfrom click.testing import CliRunner\nfrom adrt.cli import main\n"
            f"r = CliRunner().invoke(main, ['bench', {str(b)!r}, '--runs', '1', '--warmup', '0', '--rounds', '1', "
            "'--no-gemm', '--profile-runs', '0', '--no-torch'])\n"
            "assert r.exit_code == 0, r.output\nassert '| padim | ort-cpu |' in r.output\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_bench_times_torch_from_the_recorded_run_folder(runs, tmp_path):
    # `adrt export` records the run folder; `adrt bench` then adds torch eager without --torch-run.
    pytest.importorskip("torch")
    import shutil

    from click.testing import CliRunner

    from adrt.cli import main

    run, b = runs("padim")
    fast = ["--runs", "1", "--warmup", "0", "--rounds", "1", "--no-gemm", "--profile-runs", "0"]
    assert json.loads((b / "manifest.json").read_text())["training"]["run_folder"] == str(run.resolve())
    r = CliRunner().invoke(main, ["bench", str(b), *fast, "--out", str(tmp_path / "auto")])
    assert r.exit_code == 0, r.output
    assert [x["backend"] for x in json.loads((tmp_path / "auto.json").read_text())["results"]] == ["ort-cpu", "torch-eager"]
    assert "recorded run folder" in r.output
    r = CliRunner().invoke(main, ["bench", str(b), *fast, "--no-torch", "--out", str(tmp_path / "off")])
    assert r.exit_code == 0, r.output
    assert [x["backend"] for x in json.loads((tmp_path / "off.json").read_text())["results"]] == ["ort-cpu"]
    # A bundle carried to a machine without its run: noted, benchmarked without torch.
    moved = tmp_path / "moved"
    shutil.copytree(b, moved)
    m = json.loads((moved / "manifest.json").read_text())
    m["training"]["run_folder"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["bench", str(moved), *fast, "--out", str(tmp_path / "moved_rep")])
    assert r.exit_code == 0, r.output
    assert "is not here" in r.output
    assert [x["backend"] for x in json.loads((tmp_path / "moved_rep.json").read_text())["results"]] == ["ort-cpu"]


def test_a_drifting_machine_is_flagged(report):
    # The GEMM reference is measured before and after the rounds; a change beyond GEMM_DRIFT_WARN
    # is printed so that absolute times are not compared across runs.
    from adrt.bench.machine import GEMM_DRIFT_WARN, gemm_drift

    g = report["gemm"]["1"]
    assert g["drift"] == gemm_drift(g) and g["gflops_start"] and g["gflops_end"]
    assert gemm_drift({"gflops_start": 100.0, "gflops_end": 70.0}) == -0.3
    assert gemm_drift({"gflops_start": None, "gflops_end": 70.0}) is None
    slow, steady = copy.deepcopy(report), copy.deepcopy(report)
    slow["gemm"]["1"].update(gflops_start=100.0, gflops_end=70.0, drift=-0.3)
    steady["gemm"]["1"].update(gflops_start=100.0, gflops_end=100.0 * (1 - GEMM_DRIFT_WARN / 2), drift=-GEMM_DRIFT_WARN / 2)
    assert "speed drifted during this run" in to_markdown(slow) and "(-30%)" in to_markdown(slow)
    assert "speed drifted" not in to_markdown(steady)


def test_torch_page_faults_are_explained_and_worker_env_is_shown(report):
    # A torch-eager row paying thousands of faults per run gets a note naming glibc's settings for
    # torch's best case; a report made with worker_env says which environment its processes had.
    from adrt.bench.machine import FAULTS_NOTE

    torch_rows = [e for e in report["results"] if e["status"] == "ok" and e["backend"] == "torch-eager"]
    assert torch_rows
    faulty, few, tuned = copy.deepcopy(report), copy.deepcopy(report), copy.deepcopy(report)
    for rep, faults in ((faulty, 4576.0), (few, FAULTS_NOTE - 1.0), (tuned, 0.1)):
        for e in rep["results"]:
            if e["status"] == "ok" and e["backend"] == "torch-eager":
                e["page_faults_per_run"] = {**(e.get("page_faults_per_run") or {}), "lat": faults}
    tuned["settings"]["worker_env"] = {"MALLOC_MMAP_THRESHOLD_": "67108864"}
    md = to_markdown(faulty)
    assert "Torch eager paid up to 4576 minor page faults per batch-1 run" in md
    assert "MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728" in md
    assert "page faults per batch-1 run" not in to_markdown(few)
    md = to_markdown(tuned)
    assert "Torch eager paid" not in md
    assert "Environment of every configuration's process: `MALLOC_MMAP_THRESHOLD_=67108864`." in md


def test_worker_peak_rss_is_its_own_not_its_parents():
    # Linux carries ru_maxrss across fork + exec: a worker started by a large parent reported the
    # parent's size (every row of one report read 282.5 MiB). peak_rss_mb must be the worker's own.
    import subprocess
    import sys

    big = np.ones(256 * 2**20 // 8)            # 256 MiB, touched
    code = "from adrt.bench.worker import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert big[-1] == 1.0 and 0 < child < 200


def test_worker_env_reaches_every_configuration_process(runs, monkeypatch):
    # bench(..., worker_env=...) is how foundation.py and speedup_repeat.py time torch with glibc's
    # malloc tuned; the variables must be in each configuration's own process, not only recorded.
    import adrt.bench.harness as bench_mod

    seen = []

    class Spy(bench_mod._Worker):
        checked = False

        def ask(self, msg):
            reply = super().ask(msg)          # the worker answered: its exec is done, /proc shows its own env
            if not self.checked:
                self.checked = True
                try:
                    with open(f"/proc/{self.pid}/environ", "rb") as f:
                        seen.append(b"ADRT_TEST_WORKER_ENV=on" in f.read().split(b"\0"))
                except OSError:
                    pytest.skip("needs /proc/PID/environ (Linux)")
            return reply

    monkeypatch.setattr(bench_mod, "_Worker", Spy)
    _, b = runs("padim")
    rep = bench_many([b], ["ort-cpu"], [1, 2], runs=1, warmup=0, rounds=1, batch=2, gemm=False, profile_runs=0,
                     log=None, worker_env={"ADRT_TEST_WORKER_ENV": "on"})
    assert [e["status"] for e in rep["results"]] == ["ok", "ok"]
    assert seen == [True, True] and rep["settings"]["worker_env"] == {"ADRT_TEST_WORKER_ENV": "on"}
    seen.clear()
    bench_many([b], ["ort-cpu"], [1], runs=1, warmup=0, rounds=1, batch=2, gemm=False, profile_runs=0, log=None)
    assert seen == [False]
