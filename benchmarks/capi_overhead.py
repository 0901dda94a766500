"""Per-call overhead of the C API (libadrt) against the Python runtime, and peak RSS of the C example.

One bundle, batch 1, the same uint8 image, the same thread count. Three paths are timed, each in
its own fresh process, in interleaved rounds (C, Python, C, Python, ...) so machine noise hits
both alike:

- ``c``: a C program calling ``adrt_run`` (maps and score into its own buffers), timed in C with
  CLOCK_MONOTONIC around each call;
- ``python``: ``Session.run`` from Python, timed with ``time.perf_counter``;
- ``ort``: the same process's ONNX Runtime session called directly (``InferenceSession.run``), the
  floor under both.

The overhead of the C path is median(c) − median(python) (and the same at the 10th percentile);
the C program also times the bare crossing into Python and back (``adrt_threshold``). Peak RSS is
the ``ru_maxrss`` of the example program scoring 16 PPM images in batches of 8, beside a Python
process doing the same through ``adrt.runtime``, each started by a tiny C launcher (Linux keeps
a process's peak RSS across exec, so a child of this Python process would inherit its peak).

    python benchmarks/capi_overhead.py                   # trains a small PaDiM on generated data
    python benchmarks/capi_overhead.py --bundle bundles/bottle --runs 600

Writes benchmarks/results/capi.{json,md}. Needs a C compiler and cffi (``pip install -e ".[capi]"``);
without --bundle also ``.[train]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent

BENCH_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "adrt.h"

/* capi_bench BUNDLE IMAGE.u8 THREADS WARMUP RUNS: prints "open_ms X", "crossing_us X", then the
 * time (us) of each adrt_run call, one a line. */
int main(int argc, char **argv)
{
    adrt_handle h;
    int height, width, channels, threads, warmup, runs;
    struct timespec a, b;
    if (argc != 6)
        return 2;
    threads = atoi(argv[3]);
    warmup = atoi(argv[4]);
    runs = atoi(argv[5]);
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (adrt_open(argv[1], "ort-cpu", threads, &h) != ADRT_OK ||
        adrt_input_size(h, &height, &width, &channels) != ADRT_OK) {
        const char *m;
        adrt_last_error(&m);
        fprintf(stderr, "%s\n", m);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("open_ms %.3f\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    /* The fixed cost of one call through the library into Python and back: adrt_threshold. */
    float threshold;
    double best = 1e30;
    for (int k = 0; k < 20; k++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < 100; i++)
            adrt_threshold(h, &threshold);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double us = ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3) / 100;
        best = us < best ? us : best;
    }
    printf("crossing_us %.3f\n", best);
    size_t len = (size_t)height * width * channels;
    unsigned char *image = malloc(len);
    float *map = malloc(sizeof(float) * height * width), score;
    FILE *f = fopen(argv[2], "rb");
    if (!image || !map || !f || fread(image, 1, len, f) != len)
        return 2;
    fclose(f);
    for (int i = 0; i < warmup + runs; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        int status = adrt_run(h, image, len, 1, height, width, channels, map, (size_t)height * width, &score, 1);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (status != ADRT_OK)
            return 3;
        if (i >= warmup)
            printf("%.3f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
    }
    free(image);
    free(map);
    return adrt_close(h);
}
"""


# Peak RSS through a tiny launcher: Linux carries a process's peak RSS over exec, and a child forked
# from this (large) Python process would start from this process's peak. The launcher is small.
RSS_C = r"""
#define _DEFAULT_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* rss_launch PROGRAM ARGS...: runs it (stdout to /dev/null), prints its peak RSS in KiB. */
int main(int argc, char **argv)
{
    struct rusage ru;
    int status;
    pid_t pid;
    if (argc < 2)
        return 2;
    if ((pid = fork()) == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        execvp(argv[1], argv + 1);
        _exit(127);
    }
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0)
        return 2;
    printf("%ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}
"""


def python_worker(bundle: str, image: str, threads: int, warmup: int, runs: int) -> None:
    """Time Session.run and the raw ONNX Runtime session (alternating) in this fresh process."""
    import time

    t0 = time.perf_counter()
    import adrt.runtime as rt

    s = rt.load(bundle, threads=threads or None)
    print(f"open_ms {(time.perf_counter() - t0) * 1e3:.3f}")
    x = np.fromfile(image, np.uint8).reshape(1, s.height, s.width, s.channels)
    ort = s.backend.session
    for _ in range(warmup):
        s.run(x)
        ort.run(None, {"image": x})
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(x)
        t1 = time.perf_counter()
        ort.run(None, {"image": x})
        t2 = time.perf_counter()
        print(f"{(t1 - t0) * 1e6:.3f} {(t2 - t1) * 1e6:.3f}")
    s.close()


def rss_worker(bundle: str, images: str, threads: int) -> None:
    """The Python counterpart of the example program: load, run the images in batches of 8."""
    import adrt.runtime as rt

    with rt.load(bundle, threads=threads or None) as s:
        x = np.fromfile(images, np.uint8).reshape(-1, s.height, s.width, s.channels)
        for i in range(0, len(x), 8):
            s.run(x[i:i + 8])


def peak_rss_mb(launcher: Path, cmd: list[str]) -> float:
    """Run ``cmd`` under the launcher and return its own peak RSS (MiB)."""
    p = subprocess.run([str(launcher)] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    return int(p.stdout.split()[-1]) / 1024  # KiB on Linux


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stats_us(t: list[float]) -> dict:
    a = np.asarray(t)
    return {"n": len(a), "median_us": float(np.median(a)), "p10_us": float(np.percentile(a, 10)),
            "p90_us": float(np.percentile(a, 90)), "mean_us": float(a.mean()), "min_us": float(a.min())}


def make_bundle(work: Path, size: int) -> Path:
    from adrt.export.pipeline import export_run
    from adrt.synth import make_dataset
    from adrt.train.fit import train

    data = make_dataset(work / "data" / "weave", size=size, n_train=20, n_test_good=4, n_test_defect=6, seed=0,
                        overwrite=True)
    run = train("padim", data, work / "padim", size=size, seed=0, log=lambda *a, **k: None, overwrite=True)
    return export_run(run, work / "padim_bundle", data, overwrite=True)


def to_markdown(r: dict) -> str:
    c, p, o = r["c"], r["python"], r["ort"]
    lines = [
        "# C API overhead (libadrt vs the Python runtime)",
        "",
        f"{r['date']} · {r['machine']['cpu']} ({r['machine']['cores']} cores) · Python {r['machine']['python']} · "
        f"onnxruntime {r['machine']['onnxruntime']} · cffi {r['machine']['cffi']}",
        "",
        f"Bundle: {r['bundle']['method']} {r['bundle']['input']}, batch 1, {r['threads']} ONNX Runtime thread(s), "
        f"{r['runs']} timed calls per path in {r['rounds']} interleaved rounds (each a fresh process), "
        f"after {r['warmup']} untimed calls per process.",
        "",
        "| path | median µs | p10 µs | p90 µs | min µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in (("C `adrt_run`", c), ("Python `Session.run`", p), ("ONNX Runtime `InferenceSession.run`", o)):
        lines.append(f"| {name} | {s['median_us']:.1f} | {s['p10_us']:.1f} | {s['p90_us']:.1f} | {s['min_us']:.1f} |")
    lines += [
        "",
        f"**Per-call overhead of the C path over calling the Python runtime directly: "
        f"{r['overhead_us']:+.1f} µs** (median − median; {r['overhead_pct']:+.1f} % of the Python call). "
        f"`Session.run` itself adds {p['median_us'] - o['median_us']:+.1f} µs over ONNX Runtime.",
        "",
        f"The same at the 10th percentile, less exposed to machine noise: {r['overhead_p10_us']:+.1f} µs. "
        f"Per round (median C − median Python, each round a fresh pair of processes): "
        f"{', '.join(f'{v:+.1f}' for v in r['overhead_per_round_us'])} µs.",
        "",
        f"The fixed cost of one call through libadrt into the embedded Python and back (`adrt_threshold`, best "
        f"of 20×100 calls): {r['crossing_us']:.1f} µs; the rest of the C path's overhead is building numpy views "
        f"of the caller's buffers, the handle table and copying maps and scores out.",
        "",
        f"First `adrt_open` in a C process (starts the embedded interpreter, imports numpy and onnxruntime, "
        f"verifies the bundle, creates the session): median {r['c_open_ms']:.0f} ms; `import adrt.runtime` + "
        f"`rt.load` in a running Python process: {r['python_open_ms']:.0f} ms.",
        "",
        "| peak RSS | MiB |",
        "|---|---:|",
        f"| `adrt_example` scoring {r['rss']['images']} PPM images (batches of 8) | {r['rss']['c_example_mb']:.1f} |",
        f"| Python process doing the same with `adrt.runtime` | {r['rss']['python_mb']:.1f} |",
        "",
        "Regenerate with `python benchmarks/capi_overhead.py` (see its docstring for the protocol).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="An existing bundle; default: train a small PaDiM on generated data.")
    ap.add_argument("--size", type=int, default=64, help="Image size of the generated bundle.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2000, help="Timed calls per path, over all rounds.")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "capi")
    ap.add_argument("--worker", choices=["python", "rss"], help=argparse.SUPPRESS)
    ap.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "python":
        b, img, threads, warmup, runs = args.worker_args
        python_worker(b, img, int(threads), int(warmup), int(runs))
        return 0
    if args.worker == "rss":
        b, imgs, threads = args.worker_args
        rss_worker(b, imgs, int(threads))
        return 0

    import cffi
    import onnxruntime

    from adrt.runtime.capi.build import build_example, build_library, compile_command
    from adrt.runtime.image import read_image

    with tempfile.TemporaryDirectory(prefix="adrt-capi-bench-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or make_bundle(work, args.size)
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        spec = manifest["input"]
        h, w = int(spec["height"]), int(spec["width"])
        lib_dir = work / "capi"
        build_library(lib_dir)
        example = build_example(lib_dir)
        src = lib_dir / "capi_bench.c"
        src.write_text(BENCH_C)
        bench_exe = lib_dir / "capi_bench"
        subprocess.run(compile_command(src, lib_dir, bench_exe), check=True)
        launcher = lib_dir / "rss_launch"
        (lib_dir / "rss_launch.c").write_text(RSS_C)
        subprocess.run(["cc", "-O2", str(lib_dir / "rss_launch.c"), "-o", str(launcher)], check=True)

        rng = np.random.default_rng(0)
        # Procedural images at the bundle's size (a smooth texture with noise): content does not change the cost.
        yy, xx = np.mgrid[0:h, 0:w]
        base = (127 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0))[..., None].repeat(3, axis=2)
        images = np.clip(base[None] + rng.normal(0, 10, (16, h, w, 3)), 0, 255).astype(np.uint8)
        if args.bundle is None:  # use the generated data set's own test images where they exist
            paths = sorted((work / "data" / "weave" / "test").rglob("*.png"))[:16]
            images[:len(paths)] = np.stack([read_image(p) for p in paths])
        one = work / "one.u8"
        images[0].tofile(one)
        all_u8 = work / "all.u8"
        images.tofile(all_u8)
        ppms = []
        for i, im in enumerate(images):
            ppms.append(work / f"{i:02d}.ppm")
            ppms[-1].write_bytes(b"P6\n%d %d\n255\n" % (w, h) + im.tobytes())

        calls = max(1, args.runs // args.rounds)
        c_times, py_times, ort_times, c_open, py_open, crossing, per_round = [], [], [], [], [], [], []
        me = [sys.executable, str(Path(__file__).resolve())]
        for r in range(args.rounds):
            for path in (("c", "python") if r % 2 == 0 else ("python", "c")):
                if path == "c":
                    out = subprocess.run([str(bench_exe), str(bundle), str(one), str(args.threads), str(args.warmup),
                                          str(calls)], capture_output=True, text=True, check=True).stdout.split("\n")
                    c_open.append(float(out[0].split()[1]))
                    crossing.append(float(out[1].split()[1]))
                    c_times += [float(x) for x in out[2:] if x]
                else:
                    out = subprocess.run(me + ["--worker", "python", str(bundle), str(one), str(args.threads),
                                               str(args.warmup), str(calls)],
                                         capture_output=True, text=True, check=True).stdout.split("\n")
                    py_open.append(float(out[0].split()[1]))
                    for x in out[1:]:
                        if x:
                            a, b = x.split()
                            py_times.append(float(a))
                            ort_times.append(float(b))
            c_r, py_r = statistics.median(c_times[-calls:]), statistics.median(py_times[-calls:])
            per_round.append(c_r - py_r)
            print(f"round {r + 1}/{args.rounds}: C {c_r:.1f} µs, Python {py_r:.1f} µs", file=sys.stderr)

        rss_c = peak_rss_mb(launcher, [str(example), "--threads", str(args.threads), "--batch", "8", str(bundle)]
                            + [str(p) for p in ppms])
        rss_py = peak_rss_mb(launcher, me + ["--worker", "rss", str(bundle), str(all_u8), str(args.threads)])

        c, py, ort = stats_us(c_times), stats_us(py_times), stats_us(ort_times)
        report = {
            "date": datetime.date.today().isoformat(),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "cffi": cffi.__version__, "platform": platform.platform()},
            "bundle": {"path": str(args.bundle) if args.bundle else f"generated PaDiM {args.size}×{args.size}",
                       "method": manifest["method"], "input": f"{h}×{w}×{spec['channels']}"},
            "threads": args.threads, "runs": len(c_times), "rounds": args.rounds, "warmup": args.warmup,
            "c": c, "python": py, "ort": ort,
            "overhead_us": c["median_us"] - py["median_us"],
            "overhead_pct": 100 * (c["median_us"] - py["median_us"]) / py["median_us"],
            "overhead_per_round_us": per_round,
            "overhead_p10_us": c["p10_us"] - py["p10_us"],
            "crossing_us": min(crossing),
            "c_open_ms": statistics.median(c_open), "python_open_ms": statistics.median(py_open),
            "rss": {"images": len(ppms), "c_example_mb": rss_c, "python_mb": rss_py},
        }
    write_report(args.out, report, to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
