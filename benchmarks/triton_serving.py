"""Triton Inference Server serving a bundle through adrt's Python-backend form, against `adrt bench`.

One bundle, two models in one repository written by `adrt triton`: ``dyn`` (dynamic batching, up
to ``--max-batch``, ``--queue-delay-us``) and ``nodyn`` (each request executed alone). One real
``tritonserver`` (nvidia-pytriton's wheel, Python backend, this CPU), one model instance with
``--threads`` ONNX Runtime threads. For 1, 4 and 16 concurrent clients (threads of this process,
one gRPC connection each, batch-1 requests of a fixed random image, back to back) it measures
throughput (images/s over the timed window) and p50/p99 request latency, and the average batch
Triton executed (from its statistics). Then `adrt bench` times the same bundle in-process (ORT
CPU, same threads): batch-1 latency and throughput at batch 1 and at ``--batch``.

The clients run on the same 2 CPUs as the server, so these are figures of this machine under this
load, not of Triton alone: timing-sensitive, rerun on a quiet machine.

    python benchmarks/triton_serving.py                       # trains a PatchCore (256 px) on generated data
    python benchmarks/triton_serving.py --bundle bundles/bottle --seconds 20

Writes benchmarks/results/triton.{json,md}. (Not named triton.py: this folder is on sys.path when a
script here runs, and torch's exporter would import such a file as OpenAI's triton package.) Needs ``pip install -e ".[triton]"`` (and ``.[train]``
without --bundle).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_bundle(work: Path, size: int) -> Path:
    from adrt.export.pipeline import export_run
    from adrt.synth import make_dataset
    from adrt.train.fit import train

    bundle = work / f"patchcore{size}_bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    data = make_dataset(work / f"data{size}", size=size, n_train=40, n_test_good=4, n_test_defect=4, seed=0,
                        overwrite=True)
    run = train("patchcore", data, work / f"patchcore{size}_run", size=size, log=lambda *a, **k: None)
    return export_run(run, bundle, data)


def drive(grpc, address: str, model: str, clients: int, image: np.ndarray, warmup: float, seconds: float) -> list:
    """``clients`` threads sending batch-1 requests back to back; the latencies (s) of the requests
    that started after the warm-up and finished inside the timed window of ``seconds``."""
    start = threading.Barrier(clients + 1)
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    window: dict = {}

    def client(i: int) -> None:
        c = grpc.InferenceServerClient(address)
        inp = grpc.InferInput("image", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        outs = [grpc.InferRequestedOutput(n) for n in ("anomaly_map", "score")]
        try:
            start.wait()
            while True:
                t0 = time.perf_counter()
                if t0 >= window["end"]:
                    break
                c.infer(model, [inp], outputs=outs)
                t1 = time.perf_counter()
                if t0 >= window["begin"] and t1 <= window["end"]:
                    lat[i].append(t1 - t0)
        except Exception as e:  # reported by the caller
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window.update(begin=now + warmup, end=now + warmup + seconds)
    start.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{model} with {clients} clients: {errors[0]}")
    return [x for per in lat for x in per]


def batch_stats(client, model: str) -> tuple[int, int]:
    s = client.get_inference_statistics(model).model_stats[0]
    return int(s.inference_count), int(s.execution_count)


def write_repo(bundle: Path, work: Path, args) -> Path:
    from adrt.triton.config import Form, ServeOptions
    from adrt.triton.repository import parse_sources, write_repository

    repo = work / "repo"
    common = dict(max_batch=args.max_batch, threads=args.threads, max_queue_delay_us=args.queue_delay_us)
    write_repository(parse_sources([f"dyn={bundle}"]), repo, Form.PYTHON, ServeOptions(**common), overwrite=True)
    write_repository(parse_sources([f"nodyn={bundle}"]), repo, Form.PYTHON,
                     ServeOptions(**common, dynamic_batching=False), add=True)
    return repo


def adrt_bench(bundle: Path, args) -> dict:
    from adrt.bench.harness import bench

    rep = bench(bundle, threads=args.threads, runs=args.bench_runs, warmup=10, batch=args.batch, gemm=False, log=None)
    e = rep["results"][0]
    return {"samples_ms": e["samples_ms"], "batch_images_per_s": e["throughput"]["images_per_s"]}


def direct(bundle: Path, image: np.ndarray, args) -> list:
    """Session.run in this process, back to back for ``--seconds``: the same ORT session settings as
    the served model, without Triton, gRPC or adrt bench's worker process."""
    import adrt.runtime as rt

    with rt.load(bundle, threads=args.threads) as s:
        t_end = time.perf_counter() + args.warmup
        while time.perf_counter() < t_end:
            s.run(image)
        out, t_end = [], time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            s.run(image)
            out.append(time.perf_counter() - t0)
    return out


def measure(bundle: Path, work: Path, args) -> dict:
    """``--rounds`` rounds; each runs `adrt bench` and then every Triton row (dynamic batching on and
    off at each concurrency), so a drift of this machine's speed hits all of them alike."""
    import tritonclient.grpc as grpc

    from adrt.triton.server import TritonServer

    repo = write_repo(bundle, work, args)
    h, w = (json.loads((bundle / "manifest.json").read_text())["input"][k] for k in ("height", "width"))
    image = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    keys = [(m, n) for n in args.concurrency for m in ("dyn", "nodyn")]
    lat = {k: [] for k in keys}
    per_round = {k: [] for k in keys}
    batches = {k: [0, 0] for k in keys}
    bench_rounds, direct_lat, direct_rounds = [], [], []
    with TritonServer(repo) as srv:
        stats = grpc.InferenceServerClient(srv.grpc_address)
        version = stats.get_server_metadata().version
        for r in range(args.rounds):
            b = adrt_bench(bundle, args)
            bench_rounds.append(b)
            print(f"round {r + 1}: adrt bench p50 {np.percentile(b['samples_ms'], 50):.2f} ms", file=sys.stderr)
            d = direct(bundle, image, args)
            direct_lat += d
            direct_rounds.append(round(1 / np.mean(d), 1))
            for k in keys:
                before = batch_stats(stats, k[0])
                got = drive(grpc, srv.grpc_address, k[0], k[1], image, args.warmup, args.seconds)
                after = batch_stats(stats, k[0])
                batches[k][0] += after[0] - before[0]
                batches[k][1] += after[1] - before[1]
                lat[k] += got
                per_round[k].append(len(got) / args.seconds)
                print(f"round {r + 1}: {k[0]:5s} clients {k[1]:2d}: {len(got) / args.seconds:7.1f} img/s  "
                      f"p50 {np.percentile(got, 50) * 1e3:7.2f} ms", file=sys.stderr)
        stats.close()
    rows = []
    for (m, n) in keys:
        ms = np.array(lat[(m, n)]) * 1e3
        inf, ex = batches[(m, n)]
        rows.append({"model": m, "dynamic_batching": m == "dyn", "clients": n, "requests": int(ms.size),
                     "images_per_s": float(ms.size / (args.seconds * args.rounds)),
                     "images_per_s_per_round": [round(x, 1) for x in per_round[(m, n)]],
                     "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "avg_batch": round(inf / ex, 2) if ex else None})
    ms = np.concatenate([b["samples_ms"] for b in bench_rounds])
    bench = {"threads": args.threads, "runs_per_round": args.bench_runs, "p50_ms": float(np.percentile(ms, 50)),
             "p99_ms": float(np.percentile(ms, 99)), "batch1_images_per_s": float(1e3 / ms.mean()),
             "batch1_images_per_s_per_round": [round(1e3 / np.mean(b["samples_ms"]), 1) for b in bench_rounds],
             "batch": args.batch, "batch_images_per_s": float(np.median([b["batch_images_per_s"] for b in bench_rounds])),
             "batch_images_per_s_per_round": [round(b["batch_images_per_s"], 1) for b in bench_rounds]}
    d = np.array(direct_lat) * 1e3
    here = {"p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)),
            "images_per_s": float(1e3 / d.mean()), "images_per_s_per_round": direct_rounds}
    return {"triton_version": version, "rows": rows, "adrt_bench": bench, "session_run_here": here}


def to_markdown(report: dict) -> str:
    s = report["settings"]
    m = report["measured"]
    lines = [
        "# Triton Inference Server (Python-backend form) vs `adrt bench`", "",
        f"{report['created']}, {report['machine']}, Triton {m['triton_version']} from nvidia-pytriton. "
        f"Bundle: {s['bundle']} ({s['method']}, {s['size']}×{s['size']}). One model instance, ONNX Runtime CPU at "
        f"{s['threads']} threads; clients: threads of one process, one gRPC connection each, batch-1 requests back "
        f"to back. {s['rounds']} interleaved rounds; per round `adrt bench` ({s['bench_runs']} batch-1 runs, then "
        f"batch {m['adrt_bench']['batch']}), a `Session.run` loop in this process, and then every Triton row ({s['warmup']} s warm-up, {s['seconds']} s "
        f"timed). Dynamic batching: max batch {s['max_batch']}, max queue delay {s['queue_delay_us']} µs. Clients "
        f"and server share this machine's CPUs; 1-minute load average {s['load_avg'][0]} before, "
        f"{s['load_avg'][1]} after.",
        "", "| path | dynamic batching | clients | images/s | per round | p50 ms | p99 ms | avg batch executed |",
        "|---|---|---|---|---|---|---|---|"]
    for r in sorted(m["rows"], key=lambda r: (not r["dynamic_batching"], r["clients"])):
        lines.append(f"| Triton (gRPC) | {'on' if r['dynamic_batching'] else 'off'} | {r['clients']} | "
                     f"{r['images_per_s']:.1f} | {', '.join(map(str, r['images_per_s_per_round']))} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['avg_batch']} |")
    b = m["adrt_bench"]
    lines.append(f"| `adrt bench` in-process, batch 1 | – | 1 | {b['batch1_images_per_s']:.1f} | "
                 f"{', '.join(map(str, b['batch1_images_per_s_per_round']))} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | 1 |")
    lines.append(f"| `adrt bench` in-process, batch {b['batch']} | – | 1 | {b['batch_images_per_s']:.1f} | "
                 f"{', '.join(map(str, b['batch_images_per_s_per_round']))} | – | – | {b['batch']} |")
    d = m["session_run_here"]
    lines.append(f"| `Session.run` loop in the client process, batch 1 | – | 1 | {d['images_per_s']:.1f} | "
                 f"{', '.join(map(str, d['images_per_s_per_round']))} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | 1 |")
    lines += ["", "Images/s for Triton: requests completed in the timed windows / their length; p50/p99 over all "
              "rounds' requests. For `adrt bench`: 1000 / mean batch-1 ms, and batch / median batch time (median of "
              "the rounds). Timing-sensitive: rerun on a quiet machine (`python benchmarks/triton_serving.py`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="Bundle to serve (default: train a PatchCore).")
    ap.add_argument("--size", type=int, default=256, help="Input size of the generated bundle.")
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "triton_bench")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="Timed window per row and round.")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (server model and adrt bench).")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--queue-delay-us", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8, help="adrt bench's throughput batch.")
    ap.add_argument("--bench-runs", type=int, default=100, help="adrt bench's batch-1 runs per round.")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "triton")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle or make_bundle(args.work, args.size))
    manifest = json.loads((bundle / "manifest.json").read_text())
    load0 = os.getloadavg()[0]
    measured = measure(bundle, args.work, args)
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {"bundle": str(bundle), "method": manifest["method"], "size": manifest["input"]["height"],
                     "threads": args.threads, "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
                     "bench_runs": args.bench_runs, "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us,
                     "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]},
        "measured": measured}
    write_report(args.out, report, to_markdown(report))


if __name__ == "__main__":
    main()
