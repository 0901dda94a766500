"""adrt train-many: product lists (JSON, TOML, folders) and a real local Ray with tiny products, one
failing on bad data and one whose worker dies once (retried)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adrt.cli import main
from adrt.cluster.products import Product, load_products
from adrt.errors import InputError


def tiny(root: Path, name: str, seed: int, texture: str = "weave") -> Path:
    from adrt.synth import make_dataset

    return make_dataset(root / name, size=32, n_train=12, n_test_good=2, n_test_defect=2, seed=seed, texture=texture)


def test_products_from_json_toml_and_folders(tmp_path):
    cfg = {"defaults": {"method": "padim", "size": 64, "options": {"n_features": 20}, "cpus": 2},
           "products": [{"name": "a", "data": "data/a"},
                        {"name": "b", "data": "/abs/b", "method": "patchcore", "options": {"coreset_ratio": 0.5},
                         "gpus": 1, "memory_mb": 2048}]}
    (tmp_path / "p.json").write_text(json.dumps(cfg))
    a, b = load_products(tmp_path / "p.json", {"size": 32, "seed": 3})
    assert a == Product(name="a", data=str((tmp_path / "data" / "a").resolve()), method="padim", size=32, seed=3,
                        options={"n_features": 20}, cpus=2)
    # Product keys win over the command line, which wins over the file's defaults; options merge.
    assert (b.method, b.data, b.size, b.gpus, b.memory_mb) == ("patchcore", "/abs/b", 32, 1, 2048)
    assert b.options == {"n_features": 20, "coreset_ratio": 0.5}
    if sys.version_info >= (3, 11):
        (tmp_path / "p.toml").write_text('[defaults]\nmethod = "padim"\n\n[[products]]\nname = "t"\ndata = "x"\n'
                                         '[products.options]\nn_features = 10\n')
        (t,) = load_products(tmp_path / "p.toml")
        assert (t.name, t.method, t.options, t.data) == ("t", "padim", {"n_features": 10}, str((tmp_path / "x").resolve()))

    cats = tmp_path / "cats"
    tiny(cats, "one", 0)
    tiny(cats, "two", 1)
    (cats / "notes").mkdir()  # not a category: ignored
    ps = load_products(cats, {"method": "padim"})
    assert [(p.name, p.method) for p in ps] == [("one", "padim"), ("two", "padim")]
    assert [p.name for p in load_products(cats / "one")] == ["one"]

    bad = [
        ({"products": []}, "non-empty list 'products'"),
        ({"products": [{"name": "a"}]}, "'data' is missing"),
        ({"products": [{"name": "a", "data": "x", "sise": 3}]}, "unknown key 'sise'; keys: name, data, method"),
        ({"products": [{"name": "a", "data": "x", "size": "big"}]}, "size = 'big': expected int"),
        ({"products": [{"name": "a", "data": "x", "cpus": True}]}, "cpus = True: expected int or float"),
        ({"products": [{"name": "a", "data": "x"}, {"name": "a", "data": "y"}]}, "'a' appears twice"),
        ({"products": [{"name": "../a", "data": "x"}]}, "name '../a'"),
        ({"defaults": {"data": "x"}, "products": [{"name": "a"}]}, "defaults cannot set name or data"),
        ({"product": []}, "unknown top-level key(s) product"),
        ({"products": [{"name": "a", "data": "x", "holdout": 1.5}]}, "holdout 1.5: expected between 0 and 1"),
    ]
    for content, match in bad:
        (tmp_path / "bad.json").write_text(json.dumps(content))
        with pytest.raises(InputError, match=match.replace("(", r"\(").replace(")", r"\)")):
            load_products(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_products(tmp_path / "bad.json")
    with pytest.raises(InputError, match="expected a .json or .toml config file"):
        load_products(tmp_path / "cats" / "one" / "train" / "good" / "000.png")
    with pytest.raises(InputError, match="no MVTec-style categories"):
        load_products(tmp_path / "cats" / "notes")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'adrt[cluster]'")
    pytest.importorskip("torch")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=128 << 20)
    yield ray
    ray.shutdown()


@pytest.mark.cluster
def test_three_products_one_failing_one_retried(tmp_path, local_ray):
    from adrt.cluster.train_many import run_many, train_product

    data = tmp_path / "data"
    products = [
        Product(name="weave", data=str(tiny(data, "weave", 0)), method="padim", size=32, options={"n_features": 10}),
        Product(name="grain", data=str(tiny(data, "grain", 1, "grain")), method="patchcore", size=32,
                options={"coreset_ratio": 0.5}),
        Product(name="broken", data=str(tiny(data, "broken", 2)), method="padim", size=32, options={"n_features": 10}),
    ]
    (data / "broken" / "train" / "good" / "003.png").write_bytes(b"\x89PNG truncated by the camera")
    flag = tmp_path / "crashed-once"

    def crash_once(product, out):
        # The worker process dies in the middle of training, as on a lost node: Ray retries the task.
        if product["name"] == "grain" and not flag.exists():
            import adrt.train.fit

            def dying_train(*args, **kwargs):
                flag.write_text("x")
                os._exit(1)

            adrt.train.fit.train = dying_train  # this worker process dies with the patch
        return train_product(product, out)

    lines = []
    report = run_many(products, tmp_path / "out", max_retries=2, task=crash_once, progress=lines.append)
    by = {r["name"]: r for r in report["products"]}
    assert [r["name"] for r in report["products"]] == ["weave", "grain", "broken"]
    assert by["weave"]["status"] == "ok" and by["grain"]["status"] == "ok"
    assert by["broken"]["status"] == "failed" and "003.png: not a readable image" in by["broken"]["error"]
    assert flag.exists() and by["grain"]["attempts"] == 2 and by["weave"]["attempts"] == 1
    for name in ("weave", "grain"):
        m = by[name]["metrics"]
        assert 0.0 <= m["image_auroc"] <= 1.0 and "aupro" in m and by[name]["seconds"] > 0
    # Progress: one line per finished product, in completion order.
    assert len(lines) == 4 and lines[-1].startswith("[3/3] ") and "1 failed" in lines[-1]
    assert any(line.startswith("[") and "broken: FAILED" in line for line in lines)

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["products"] == report["products"] and saved["ray"]["resources"]["CPU"] == 2
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| weave | padim | ok |" in md and "| broken | padim | failed |" in md and "2 of 3 products ok" in md
    assert "Traceback" in (tmp_path / "out" / "logs" / "broken.log").read_text()

    # Without retries a lost worker is that product's failure, reported like any other.
    flag.unlink()
    lost = run_many(products[1:2], tmp_path / "out2", max_retries=0, task=crash_once)["products"][0]
    assert lost["status"] == "failed" and lost["attempts"] == 1 and "Worker" in lost["error"], lost
    assert flag.exists()

    import adrt.runtime as rt

    with rt.load(by["grain"]["bundle"]) as s:
        r = s.run(np.zeros((1, 32, 32, 3), np.uint8))
        assert r.maps.shape == (1, 32, 32) and s.method == "patchcore"


@pytest.mark.cluster
def test_cli_folder_of_categories(tmp_path, local_ray):
    cats = tmp_path / "cats"
    tiny(cats, "only", 0)
    out = tmp_path / "out"
    args = ["train-many", cats, "--out", out, "--method", "padim", "--size", 32, "--set", "n_features=10", "--no-eval"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "| only | padim | ok |" in r.output and "1 of 1 products ok" in r.output
    assert (out / "bundles" / "only" / "manifest.json").is_file()
    assert json.loads((out / "results.json").read_text())["products"][0]["metrics"] is None
    # An earlier output folder is kept unless --overwrite; a bad option fails that product only.
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1 and "--overwrite retrains into it" in r.output
    r = CliRunner().invoke(main, [str(a) for a in args[:-3]] + ["--set", "n_features=x", "--overwrite"])
    assert r.exit_code == 1 and "1 of 1 products failed (only)" in r.output
    assert "n_features='x': expected a value like" in (out / "results.md").read_text()


HEAD = """import sys, ray
ctx = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
               object_store_memory=128 << 20)
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.readline()
ray.shutdown()
"""


@pytest.mark.cluster
def test_cli_address_joins_an_existing_cluster(tmp_path):
    """--address: the tasks go to a Ray cluster started elsewhere (another process, 1 CPU), which
    outlives the call; --local-cpus with --address is refused."""
    import subprocess

    pytest.importorskip("ray", reason="needs Ray: pip install 'adrt[cluster]'")
    pytest.importorskip("torch")
    cats = tmp_path / "cats"
    tiny(cats, "only", 0)
    args = ["train-many", cats, "--out", tmp_path / "out", "--method", "padim", "--size", 32, "--set",
            "n_features=10", "--no-eval"]
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--address", "auto", "--local-cpus", "2"])
    assert r.exit_code == 2 and "--local-cpus/--local-gpus size a local Ray" in r.output
    # Ray >= 2.5x asks other processes for a token unless auth is off; both sides run without it here.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        run = subprocess.run([sys.executable, "-m", "adrt.cli", *map(str, args), "--address", address],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "| only | padim | ok |" in run.stdout and "[1/1] only: ok" in run.stderr
        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        assert saved["ray"] == {"address": address, "resources": {"CPU": 1.0}}
        assert head.poll() is None  # the cluster is not this call's to stop
    finally:
        head.stdin.write("\n")
        head.stdin.flush()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
