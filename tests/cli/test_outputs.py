"""Regression corpus of issue #17 (CLI side): nothing lost (outputs replace only their own kind,
with --overwrite, never an input), outputs checked before the work, one-line errors everywhere,
--debug for tracebacks, Ctrl-C as exit 130, and the first-use papercuts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from adrt.cli import main

from tests.conftest import SIZE


def cli(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None)
                  for p in folder.rglob("*"))


def _one_line_error(r, match):
    assert r.exit_code == 1, r.output
    assert match in r.output, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1, r.output


@pytest.fixture
def foreign(tmp_path):
    """A folder of someone's files."""
    d = tmp_path / "my_folder"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    return d


# --- 1. data loss --------------------------------------------------------------------------------

def test_train_refuses_a_foreign_out_folder_before_training(synth_data, foreign):
    pytest.importorskip("torch")
    before = _tree(foreign)
    t0 = time.perf_counter()
    r = cli("train", "padim", "--data", synth_data, "--out", foreign, "--size", SIZE)
    _one_line_error(r, "is a folder that adrt does not recognise as a run folder")
    assert time.perf_counter() - t0 < 20 and _tree(foreign) == before    # before: deleted, exit 0
    r = cli("train", "padim", "--data", synth_data, "--out", foreign, "--size", SIZE, "--overwrite")
    _one_line_error(r, "does not recognise as a run folder")
    assert _tree(foreign) == before


def test_train_never_writes_over_its_data(synth_data, tmp_path):
    pytest.importorskip("torch")
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    before = _tree(data)
    for out in (data, tmp_path):                      # the data itself, and a folder holding it
        r = cli("train", "padim", "--data", data, "--out", out, "--size", SIZE, "--overwrite")
        _one_line_error(r, "the input")
    assert _tree(data) == before


def test_export_never_writes_over_its_run(runs, tmp_path):
    pytest.importorskip("torch")
    run, _ = runs("padim")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = _tree(copy)
    r = cli("export", copy, "--out", copy, "--overwrite")
    _one_line_error(r, f"--out {copy} is the input {copy}")
    assert _tree(copy) == before                       # before: the run's weights were gone


def test_train_with_export_equal_to_out_is_refused_before_training(synth_data, tmp_path):
    pytest.importorskip("torch")
    x = tmp_path / "x"
    t0 = time.perf_counter()
    r = cli("train", "padim", "--data", synth_data, "--out", x, "--export", x, "--size", SIZE)
    _one_line_error(r, "overlap; the bundle and the run folder must be two separate folders")
    assert time.perf_counter() - t0 < 20 and not x.exists()
    r = cli("train", "padim", "--data", synth_data, "--out", x, "--export", x / "b", "--size", SIZE)
    _one_line_error(r, "overlap")


def test_an_existing_run_and_bundle_are_replaced_only_with_overwrite(synth_data, tmp_path):
    pytest.importorskip("torch")
    run, b = tmp_path / "run", tmp_path / "bundle"
    args = ("train", "padim", "--data", synth_data, "--out", run, "--export", b, "--size", SIZE,
            "--set", "n_features=20")
    assert cli(*args).exit_code == 0
    before = (_tree(run), _tree(b))
    r = cli(*args)
    _one_line_error(r, "already holds a bundle; pass --overwrite")   # the bundle is checked first
    assert (_tree(run), _tree(b)) == before
    r = cli("export", run, "--out", b)
    _one_line_error(r, "already holds a bundle; pass --overwrite")
    r = cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in run.iterdir()) == ["detector.json", "weights.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "run"]          # no temporary folders left
    (b / "notes.txt").write_text("mine")                  # a bundle holding something else is not ours any more
    r = cli("export", run, "--out", b, "--overwrite")
    _one_line_error(r, "does not recognise as a bundle")
    assert (b / "notes.txt").read_text() == "mine"


def test_eval_and_infer_outputs_are_never_a_foreign_folder(runs, synth_data, tmp_path, foreign):
    _, b = runs("padim")
    before = _tree(foreign)
    r = cli("eval", b, "--data", synth_data, "--out", foreign, "--overwrite")
    _one_line_error(r, "does not recognise as a eval folder")
    r = cli("infer", b, synth_data / "test" / "good", "--overlays", foreign, "--overwrite")
    _one_line_error(r, "does not recognise as a overlay folder")
    r = cli("infer", b, synth_data / "test" / "good", "--out", foreign / "thesis.tex")
    _one_line_error(r, "expected a .csv or .json file name")
    (foreign / "data.csv").write_text("a,b\n1,2\n")
    r = cli("infer", b, synth_data / "test" / "good", "--out", foreign / "data.csv", "--overwrite")
    _one_line_error(r, "is not a results file written by adrt")
    assert (foreign / "thesis.tex").read_text() == "years of work" and (foreign / "data.csv").read_text() == "a,b\n1,2\n"
    assert len(before) == 1 and sorted(p.name for p in foreign.iterdir()) == ["data.csv", "thesis.tex"]
    # Its own outputs: replaced with --overwrite only.
    ev, ov, out = tmp_path / "ev", tmp_path / "ov", tmp_path / "s.csv"
    for _ in range(2):
        assert cli("eval", b, "--data", synth_data, "--out", ev, "--overlays", 2, "--overwrite").exit_code == 0
        r = cli("infer", b, synth_data / "test" / "good", "--out", out, "--overlays", ov, "--overwrite")
        assert r.exit_code == 0, r.output
    _one_line_error(cli("eval", b, "--data", synth_data, "--out", ev), "already holds a eval folder")
    _one_line_error(cli("infer", b, synth_data / "test" / "good", "--out", out), "exists; pass --overwrite")
    assert len(list(ov.iterdir())) == 4


FAST_BENCH = ("--runs", 2, "--warmup", 0, "--rounds", 1, "--batch", 2, "--no-gemm", "--profile-runs", 0, "--no-torch")


def test_bench_replaces_only_its_own_reports_and_checks_them_before_the_run(runs, tmp_path, foreign):
    _, b = runs("padim")
    (foreign / "notes.md").write_text("my notes")
    before = _tree(foreign)
    for extra in ((), ("--overwrite",)):
        # One line: refused before the benchmark ran (its tables would be printed first).
        r = cli("bench", b, *FAST_BENCH, "--out", foreign / "notes", *extra)
        _one_line_error(r, f"{foreign / 'notes.md'} exists and is not a bench report written by adrt")
    assert _tree(foreign) == before                        # before: notes.md replaced by the report, exit 0
    rep = tmp_path / "rep"
    assert cli("bench", b, *FAST_BENCH, "--out", rep).exit_code == 0
    first = _tree(tmp_path)
    _one_line_error(cli("bench", b, *FAST_BENCH, "--out", rep), "exists; pass --overwrite")
    assert _tree(tmp_path) == first
    r = cli("bench", b, *FAST_BENCH, "--out", rep, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_folder", "rep.html", "rep.json", "rep.md"]


@pytest.mark.parametrize("command", ["train", "export", "eval", "infer-overlays", "bench", "synth", "demo"])
def test_an_output_below_a_file_is_refused_in_one_line_before_the_work(runs, synth_data, foreign, command):
    pytest.importorskip("torch")
    run, b = runs("padim")
    out = foreign / "thesis.tex" / "x"
    args = {"train": ("train", "padim", "--data", synth_data, "--out", out, "--size", SIZE),
            "export": ("export", run, "--out", out),
            "eval": ("eval", b, "--data", synth_data, "--out", out),
            "infer-overlays": ("infer", b, synth_data / "test" / "good", "--overlays", out),
            "bench": ("bench", b, *FAST_BENCH, "--out", out),
            "synth": ("synth", out, "--train", 1, "--size", 16),
            "demo": ("demo", "--out", out, "--method", "padim")}[command]
    r = cli(*args)                          # before: "unexpected FileExistsError", after training or benchmarking
    _one_line_error(r, f"cannot create its folder, {foreign / 'thesis.tex'} is not a folder")
    assert f"{out}" in r.output
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_synth_replaces_only_its_own_datasets(tmp_path, foreign):
    before = _tree(foreign)
    _one_line_error(cli("synth", foreign, "--train", 2, "--overwrite"), "does not recognise as a synthetic dataset")
    assert _tree(foreign) == before
    d = tmp_path / "s"
    assert cli("synth", d, "--train", 2, "--size", 16).exit_code == 0
    _one_line_error(cli("synth", d, "--train", 2, "--size", 16), "pass --overwrite")
    assert cli("synth", d, "--train", 3, "--size", 16, "--overwrite").exit_code == 0
    assert len(list((d / "train" / "good").iterdir())) == 3


def test_outputs_have_the_umasks_permissions(runs, synth_data, tmp_path):
    _, b = runs("padim")
    mask = os.umask(0o022)
    try:
        assert cli("eval", b, "--data", synth_data, "--out", tmp_path / "e", "--overlays", 1).exit_code == 0
        assert cli("synth", tmp_path / "d", "--train", 1, "--size", 16).exit_code == 0
    finally:
        os.umask(mask)
    for folder in (tmp_path / "e", tmp_path / "d"):
        assert folder.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "e" / "metrics.json").stat().st_mode & 0o777 == 0o644


# --- 8. smaller ----------------------------------------------------------------------------------

def test_infer_checks_its_out_before_scoring(runs, synth_data, tmp_path):
    _, b = runs("padim")
    out = tmp_path / "new" / "deeper" / "s.json"
    r = cli("infer", b, synth_data / "test" / "good", "--out", out)
    assert r.exit_code == 0 and len(json.loads(out.read_text())) == 4     # before: traceback after scoring
    (tmp_path / "afile").write_text("x")
    r = cli("infer", b, synth_data / "test" / "good", "--out", tmp_path / "afile" / "s.csv")
    _one_line_error(r, "cannot create its folder")


def test_eval_goes_on_when_a_defect_types_masks_vanish_at_model_size(runs, tmp_path):
    """Masks of one type that are a single pixel at 2× the model size can disappear when resized."""
    import numpy as np
    from PIL import Image

    from adrt.synth import make_dataset

    _, b = runs("padim")
    data = make_dataset(tmp_path / "d", size=2 * SIZE, n_train=2, n_test_good=3, n_test_defect=6)
    for m in (data / "ground_truth" / "spot").iterdir():
        mask = np.zeros((2 * SIZE, 2 * SIZE), np.uint8)
        mask[0, 0] = 255                 # nearest-neighbour halving samples the odd pixels
        Image.fromarray(mask).save(m)
    r = cli("eval", b, "--data", data, "--out", tmp_path / "e")
    assert r.exit_code == 0, r.output                    # before: aborted
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["notes"] == ["defect type 'spot': every mask is empty at 64x64 (defects smaller than a model pixel?); "
                          "pixel metrics skipped for it"]
    assert "pixel_auroc" in m["per_type"]["scratch"] and "pixel_auroc" not in m["per_type"]["spot"]
    assert "pixel_auroc" in m["overall"]


def _limited(code, limit_bytes):
    """Run ``code`` in a Python whose files cannot grow beyond ``limit_bytes`` (a full disk)."""
    pre = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n")
    return subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=600)


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(runs, tmp_path):
    pytest.importorskip("torch")
    run, _ = runs("padim")
    code = ("from adrt.cli import main\nimport sys\n"
            f"sys.argv = ['adrt', 'export', {str(run)!r}, '--out', {str(tmp_path / 'b')!r}]\nmain()\n")
    p = _limited(code, 100_000)
    assert p.returncode == 1, p.stderr
    assert "Error: " in p.stderr and "cannot write (File too large" in p.stderr and "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []                # before: raw OSError, and a temporary folder


def test_a_full_disk_during_eval_record_leaves_the_manifest_intact(runs, synth_data, tmp_path):
    _, src = runs("padim")
    b = tmp_path / "b"
    shutil.copytree(src, b)
    before = (b / "manifest.json").read_bytes()
    files = sorted(x.name for x in b.iterdir())
    code = ("from adrt.cli import main\nimport sys\n"
            f"sys.argv = ['adrt', 'eval', {str(b)!r}, '--data', {str(synth_data)!r}, '--record']\nmain()\n")
    p = _limited(code, len(before) + 100)
    assert p.returncode == 1 and "cannot write" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (b / "manifest.json").read_bytes() == before
    assert sorted(x.name for x in b.iterdir()) == files    # before: manifest.json.tmp left beside them


# --- the CLI's error handling --------------------------------------------------------------------

def test_an_unexpected_exception_is_one_line_and_debug_shows_it(runs, synth_data, monkeypatch):
    import adrt.runtime as rt

    _, b = runs("padim")
    images = synth_data / "test" / "good"

    def boom(*a, **k):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(rt, "load", boom)
    r = cli("info", b)                                     # info does not use load: unaffected
    assert r.exit_code == 0
    r = cli("infer", b, images)
    _one_line_error(r, "unexpected RuntimeError: something inside broke")
    assert "re-run with --debug" in r.output
    r = cli("--debug", "infer", b, images)
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)     # the traceback is shown
    r = cli("--debug", "info", b / "nope")
    assert r.exit_code == 1 and type(r.exception).__name__ == "BundleError"


def test_ctrl_c_exits_130_without_a_traceback(runs, synth_data, monkeypatch):
    import adrt.runtime as rt

    _, b = runs("padim")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rt, "load", interrupted)
    r = cli("infer", b, synth_data / "test" / "good")
    assert r.exit_code == 130 and "interrupted" in r.output and "Traceback" not in r.output


def test_ctrl_c_inside_torchs_exporter_is_a_ctrl_c(runs, tmp_path, monkeypatch):
    """torch's exporter wraps what is raised inside it; a Ctrl-C must still end as one (exit 130)."""
    torch = pytest.importorskip("torch")
    run, _ = runs("padim")

    def export(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("torch.onnx: conversion failed") from e

    monkeypatch.setattr(torch.onnx, "export", export)
    r = cli("export", run, "--out", tmp_path / "b")
    assert r.exit_code == 130 and "Traceback" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_a_real_export_exits_130_and_leaves_nothing(runs, tmp_path):
    pytest.importorskip("torch")
    run, _ = runs("patchcore")
    p = subprocess.Popen([sys.executable, "-m", "adrt.cli", "export", str(run), "--out", str(tmp_path / "b")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until the staging folder exists (the export is under way), then Ctrl-C.
    deadline = time.time() + 120
    while time.time() < deadline and not any(x.name.startswith(".b.adrt-tmp-") for x in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode in (130, 0), err                     # 0: it finished before the signal came
    assert "Traceback" not in err, err
    if p.returncode == 130:
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", ["100000", "-1", "0"])
def test_cli_thread_counts_are_bounded(runs, synth_data, threads):
    _, b = runs("padim")
    t0 = time.perf_counter()
    r = cli("infer", b, synth_data / "test" / "good", "--threads", threads)
    _one_line_error(r, f"threads={threads}: expected an integer in [1, ")
    assert time.perf_counter() - t0 < 10


def test_a_missing_torch_names_the_source_checkout_install(tmp_path):
    code = ("import sys\nsys.modules['torch'] = None\nfrom adrt.cli import main\n"
            f"sys.argv = ['adrt', 'train', 'padim', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'r')!r}]\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert 'this command needs torch: pip install -e ".[train]" in the adrt source folder' in p.stderr
    assert "download.pytorch.org/whl/cpu" in p.stderr


# --- 9. first use --------------------------------------------------------------------------------

def test_demo_with_an_unknown_method_writes_nothing(tmp_path):
    pytest.importorskip("torch")
    r = cli("demo", "--out", tmp_path / "demo", "--method", "foo")
    _one_line_error(r, "unknown method 'foo'")
    assert not (tmp_path / "demo").exists()                 # before: the dataset was written first


def test_demo_refuses_a_foreign_folder(foreign):
    pytest.importorskip("torch")
    before = _tree(foreign)
    _one_line_error(cli("demo", "--out", foreign), "is a folder that is not a demo folder made by adrt")
    assert _tree(foreign) == before


def test_demo_replaces_its_own_folder_and_restores_it_on_failure(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import adrt.cli.train as tc
    from adrt.outputs import DEMO_MARKER

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / DEMO_MARKER).touch()
    (demo / "bench.md").write_text("old")

    def fails(out, method, size):
        (out / "data").mkdir()
        raise RuntimeError("half-way")

    monkeypatch.setattr(tc, "_run_demo", fails)
    r = cli("demo", "--out", demo)
    assert r.exit_code == 1 and "half-way" in r.output
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER, "bench.md"]     # the old one is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    def works(out, method, size):
        (out / "bench.md").write_text("new")

    monkeypatch.setattr(tc, "_run_demo", works)
    assert cli("demo", "--out", demo).exit_code == 0
    assert (demo / "bench.md").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
