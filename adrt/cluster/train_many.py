"""``adrt train-many``: one Ray task per product (train, export, evaluate), results in one table.

Each product is a Ray task with its CPU/GPU/memory request. A product that fails (bad data, a
bad option) is reported with its error and the others go on; a task whose worker or node dies is
retried by Ray (``max_retries``). Without ``address`` a local Ray is started on this machine;
with one, the tasks go to that cluster, whose nodes need adrt installed and must see the data
and output folders at the same paths (shared storage).

Output folder: ``runs/<product>/``, ``bundles/<product>/``, ``logs/<product>.log`` (each
attempt's log), and ``results.json`` / ``results.md``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from adrt.errors import AdrtError, InputError

RESULTS = "results.json"
PIP_EXTRA = "pip install 'adrt[cluster]'"


def _logger(path: Path):
    def log(msg: str = "", end: str = "\n") -> None:
        if end == "\r":  # progress redraws belong on a terminal, not in a log file
            return
        with open(path, "a") as f:
            f.write(msg + "\n")

    return log


def train_product(product: dict, out: str) -> dict:
    """Train, export and evaluate one product (a Product as a dict) under ``out``; runs in a Ray
    worker. Errors are caught and returned as the product's record, so the others go on."""
    # Before torch's first import in this worker: spinning OpenMP threads slow shared CPUs down.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    name = product["name"]
    out_dir = Path(out)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "logs" / f"{name}.log"
    log = _logger(log_path)
    log(f"--- attempt on {socket.gethostname()} pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    rec = {"name": name, "method": product["method"], "data": product["data"], "status": "failed",
           "bundle": None, "metrics": None, "error": None, "node": socket.gethostname(), "log": str(log_path)}
    t0 = time.perf_counter()
    try:
        from adrt.export.pipeline import export_run
        from adrt.train.fit import train

        threads = product.get("threads") or max(1, int(product.get("cpus") or 1))
        run = train(product["method"], product["data"], out_dir / "runs" / name, size=product["size"],
                    seed=product["seed"], holdout=product["holdout"], options=product.get("options") or {},
                    threads=threads, log=log)
        rec["train_seconds"] = round(time.perf_counter() - t0, 2)
        bundle = export_run(run, out_dir / "bundles" / name, product["data"])
        rec["bundle"] = str(bundle)
        if product.get("evaluate", True):
            rec["metrics"] = _evaluate(bundle, product["data"], threads, log)
        rec["status"] = "ok"
    except Exception as e:  # any failure is this product's, reported in the table
        rec["error"] = str(e) if isinstance(e, AdrtError) else f"{type(e).__name__}: {e}"
        log(traceback.format_exc())
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["attempts"] = sum(1 for line in log_path.read_text().splitlines() if line.startswith("--- attempt"))
    return rec


def _evaluate(bundle: Path, data: str, threads: int, log) -> dict | None:
    from adrt.data import Dataset
    from adrt.evaluate import evaluate_session
    from adrt.runtime import load

    if not Dataset.open(data).test:
        log("no test split: metrics skipped")
        return None
    with load(bundle, threads=threads) as s:
        result = evaluate_session(s, data, None, log=log)
    return {k: result["overall"][k] for k in ("image_auroc", "pixel_auroc", "aupro") if k in result["overall"]}


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise InputError(f"adrt train-many runs on Ray, which is not importable here ({e}): {PIP_EXTRA}") from None
    return ray


def check_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new or empty, or a train-many output folder with ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not an output folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / RESULTS).is_file():
            raise InputError(f"{out}: folder is not empty and holds no {RESULTS} from adrt train-many; choose a new "
                             f"or empty folder")
        if not overwrite:
            raise InputError(f"{out}: holds an earlier train-many run; --overwrite retrains into it")


def run_many(products: Sequence, out: str | os.PathLike, *, address: str | None = None,
             local_cpus: int | None = None, local_gpus: int | None = None, max_retries: int = 3,
             overwrite: bool = False, task: Callable = train_product, progress=lambda m: None) -> dict:
    """Train every product as a Ray task and return the results (also written to ``out``).

    ``address``: an existing Ray cluster ("auto" or host:port); None starts a local Ray with
    ``local_cpus``/``local_gpus`` (default: this machine's). A Ray already initialised in this
    process is used as it is. ``task`` is the per-product function (tests swap it).
    """
    if not products:
        raise InputError("no products to train")
    if max_retries < 0:
        raise InputError(f"--max-retries {max_retries}: expected >= 0")
    out = Path(out).resolve()
    check_out(out, overwrite)
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kw)
        else:
            # Tasks pass small records only: a small object store keeps /dev/shm free for the work.
            ray.init(num_cpus=local_cpus, num_gpus=local_gpus, object_store_memory=256 << 20, **kw)
        started = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS).write_text(json.dumps({"status": "running", "products": []}))
        cluster = ray.cluster_resources()
        _check_fits(products, cluster)
        remote = ray.remote(task)
        t0 = time.perf_counter()
        pending = {}
        for p in products:
            opts = dict(num_cpus=p.cpus, num_gpus=p.gpus, max_retries=max_retries, retry_exceptions=False,
                        name=f"adrt-train:{p.name}")
            if p.memory_mb:
                opts["memory"] = int(p.memory_mb) << 20
            pending[remote.options(**opts).remote(p.to_dict(), str(out))] = p
        progress(f"{len(products)} products on Ray ({_describe(cluster)}), up to {max_retries} retries each on "
                 f"worker or node loss")
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or node died and retries ran out
                    rec = {"name": p.name, "method": p.method, "data": p.data, "status": "failed", "bundle": None,
                           "metrics": None, "error": f"{type(e).__name__}: {_first_line(e)}",
                           "attempts": max_retries + 1}
                results.append(rec)
                failed = sum(r["status"] != "ok" for r in results)
                progress(f"[{len(results)}/{len(products)}] {rec['name']}: {_summary(rec)} | "
                         f"{time.perf_counter() - t0:.0f} s, {len(pending)} to go, {failed} failed")
        wall = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    order = {p.name: i for i, p in enumerate(products)}
    results.sort(key=lambda r: order[r["name"]])
    report = {"status": "done", "wall_seconds": round(wall, 2), "ray": {"address": address or "local",
              "resources": {k: cluster[k] for k in ("CPU", "GPU") if k in cluster}},
              "max_retries": max_retries, "products": results}
    write_results(report, out)
    return report


def _check_fits(products, cluster: dict) -> None:
    """A task asking for more than the whole cluster has would wait for ever: refuse it now."""
    for p in products:
        for key, want in (("CPU", p.cpus), ("GPU", p.gpus)):
            if want > cluster.get(key, 0):
                raise InputError(f"product {p.name!r} asks for {want:g} {key}(s) but the Ray cluster has "
                                 f"{cluster.get(key, 0):g}; lower its {key.lower()}s or use a bigger cluster")


def _describe(cluster: dict) -> str:
    return ", ".join(f"{cluster[k]:g} {k}" for k in ("CPU", "GPU") if cluster.get(k))


def _first_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def _summary(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"FAILED ({rec['error']})"
    m = rec.get("metrics") or {}
    auroc = f", image AUROC {m['image_auroc']:.3f}" if "image_auroc" in m else ""
    return f"ok in {rec['seconds']:.1f} s{auroc}"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def to_markdown(report: dict) -> str:
    rows = ["| product | method | status | image AUROC | pixel AUROC | AUPRO | seconds | attempts | bundle or error |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in report["products"]:
        m = r.get("metrics") or {}
        where = r["bundle"] if r["status"] == "ok" else (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {r['name']} | {r['method']} | {r['status']} | {_fmt(m.get('image_auroc'))} | "
                    f"{_fmt(m.get('pixel_auroc'))} | {_fmt(m.get('aupro'))} | {r.get('seconds', '–')} | "
                    f"{r.get('attempts', '–')} | {where} |")
    ok = sum(r["status"] == "ok" for r in report["products"])
    res = report["ray"]["resources"]
    rows.append("")
    rows.append(f"{ok} of {len(report['products'])} products ok; wall time {report['wall_seconds']} s on Ray "
                f"({report['ray']['address']}: {', '.join(f'{v:g} {k}' for k, v in res.items())}).")
    return "\n".join(rows) + "\n"


def write_results(report: dict, out: Path) -> None:
    (out / "results.md").write_text(to_markdown(report))
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / RESULTS)


def progress_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
