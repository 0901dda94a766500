"""The `adrt` command: help on every subcommand, the whole path, clear errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from adrt.cli import _COMMANDS, main

from tests.conftest import SIZE


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", list(_COMMANDS))
def test_every_subcommand_has_help(name):
    r = run(name, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output


def test_top_level_help_does_not_import_torch():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom adrt.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert 'infer' in r.output\n"
            "r = CliRunner().invoke(main, ['infer', '--help'])\nassert r.exit_code == 0\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_train_eval_infer_bench_info(tmp_path, synth_data):
    pytest.importorskip("torch")
    r = run("train", "padim", "--data", synth_data, "--out", tmp_path / "run", "--size", SIZE,
            "--export", tmp_path / "bundle", "--set", "n_features=50")
    assert r.exit_code == 0, r.output
    b = tmp_path / "bundle"
    r = run("eval", b, "--data", synth_data, "--out", tmp_path / "eval", "--overlays", 3, "--record")
    assert r.exit_code == 0 and "overall" in r.output and "scratch" in r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["overall"]["image_auroc"] <= 1.0 and "aupro" in metrics["overall"]
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 3
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["metrics"][synth_data.name]["overall"]["image_auroc"] == metrics["overall"]["image_auroc"]
    r = run("info", b)
    assert r.exit_code == 0 and "checksums ok" in r.output and "padim" in r.output
    assert "model       fp32: model.onnx" in r.output and "engine      none" in r.output

    out = tmp_path / "scores.csv"
    r = run("infer", b, synth_data / "test", "--out", out, "--overlays", tmp_path / "ov")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list((synth_data / "test").rglob("*.png")))
    assert {row["label"] for row in rows} <= {"normal", "anomalous"}
    assert len(list((tmp_path / "ov").glob("*.png"))) == len(rows)
    r = run("infer", b, synth_data / "test" / "good", "--out", tmp_path / "s.json")
    assert r.exit_code == 0 and len(json.loads((tmp_path / "s.json").read_text())) == 4

    r = run("bench", b, "--runs", 3, "--warmup", 1, "--batch", 2, "--torch-run", tmp_path / "run",
            "--out", tmp_path / "bench")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "bench.json").read_text())
    assert [x["backend"] for x in rep["results"]] == ["ort-cpu", "torch-eager"]
    assert rep["results"][0]["latency_ms"]["runs"] == 3 and rep["speedup_vs_torch"] > 0
    assert "| padim | ort-cpu |" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("args, match", [
    (["train", "nope", "--data", "{data}", "--out", "{tmp}/r"], "unknown method 'nope'; available: "),
    (["train", "padim", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "missing: no such folder"),
    (["train", "padim", "--data", "{data}", "--out", "{tmp}/r", "--set", "foo"], "expected KEY=VALUE"),
    (["eval", "{tmp}/nob", "--data", "{data}"], "no such bundle"),
    (["infer", "{tmp}/nob", "{data}"], "no such bundle"),
    (["export", "{tmp}", "--out", "{tmp}/b"], "not a run folder"),
])
def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, synth_data, args, match):
    if args[0] in ("train", "export"):
        pytest.importorskip("torch")
    r = CliRunner().invoke(main, [a.format(data=synth_data, tmp=tmp_path) for a in args])
    assert r.exit_code != 0
    assert match in r.output and "Traceback" not in r.output
    if "unknown method" in match:
        assert "padim" in r.output and "patchcore" in r.output
    assert not (tmp_path / "r").exists()


def test_eval_without_masks_warns_and_still_reports_image_metrics(runs, tmp_path, synth_data):
    import shutil

    _, b = runs("padim")
    data = tmp_path / "d"
    shutil.copytree(synth_data, data)
    shutil.rmtree(data / "ground_truth" / "spot")
    r = run("eval", b, "--data", data, "--out", tmp_path / "e")
    assert r.exit_code == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "image_auroc" in m["overall"] and "pixel_auroc" not in m["overall"] and not m["data"]["pixel_metrics"]


def test_corrupt_image_is_named(runs, tmp_path, synth_data):
    _, b = runs("padim")
    bad = tmp_path / "broken.png"
    bad.write_bytes((synth_data / "test" / "good" / sorted(p.name for p in (synth_data / "test" / "good").iterdir())[0])
                    .read_bytes()[:200])
    r = CliRunner().invoke(main, ["infer", str(b), str(bad)])
    assert r.exit_code != 0 and "broken.png" in r.output


def test_demo_runs_the_whole_path(tmp_path):
    """README's main command: dataset → train → export → eval → infer → bench, all on the CPU."""
    pytest.importorskip("torch")
    r = run("demo", "--out", tmp_path / "demo", "--size", 64)
    assert r.exit_code == 0, r.output
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in r.output
    assert (tmp_path / "demo" / "bundle" / "manifest.json").is_file()
    assert json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())["overall"]["image_auroc"] > 0.9
    assert list((tmp_path / "demo" / "eval" / "overlays").glob("*.png"))
    # It names what it made and what to do next.
    assert f"bundle:   {tmp_path / 'demo' / 'bundle'}" in r.output and "bench.html" in r.output
    assert f"next:     adrt infer {tmp_path / 'demo' / 'bundle'}" in r.output
    # Running it again replaces its own folder (README's first command, twice; before: "folder is not empty").
    r = run("demo", "--out", tmp_path / "demo", "--size", 64, "--method", "padim")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "demo" / "bundle" / "manifest.json").read_text())["method"] == "padim"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
