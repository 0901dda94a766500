"""Reliability figures: a corpus of bad and edge-case inputs, tried as a user or an attacker would,
and a soak of the Python and C APIs.

Corpus. Every case is tried and classified:

- ``correct``: an expected success that gave the right result, or an expected refusal that was a
  clear adrt error (an adrt error type with a one-line message; on the CLI exit status 1/2 or 130
  and no traceback);
- ``refused valid input``: a clear error where a success was expected;
- ``silently wrong``: accepted where it should have been refused, or a wrong result;
- ``unclear error``: any other exception type (KeyError, zlib.error, ...), or a traceback on the CLI;
- ``crash``: the process died (a signal); ``hang``: no answer within the timeout (killed);
- flags: ``data lost`` (a file that was there before is gone or changed), ``partial output`` (a
  temporary or half-made output left behind), ``leaked temp`` (a temporary folder left behind).

Families: manifests (every field, wrong types and values, and seeded random mutations), files
that escape the bundle, zips (corrupt, bombs, links, traversal), thread counts, API misuse, images
(corrupt, truncated, huge, FIFOs, odd modes with known content, random bytes), and CLI commands
(outputs over foreign folders and inputs, bad options, full disks via RLIMIT_FSIZE, Ctrl-C).
API cases run in one worker process (``_reliability_cases.py``) that is killed and restarted on a
hang or crash; CLI cases each in their own process.

Soak: RSS and open file descriptors over 10 000 batch-1 runs and 500 open/run/close cycles of a
.zip bundle, through the Python API and through libadrt from C.

    python benchmarks/reliability.py                        # ~10 min on 2 cores
    python benchmarks/reliability.py --baseline-python /path/to/other/venv/bin/python   # the corpus
                                                            # against another adrt install too

Writes benchmarks/results/reliability.{json,md}. Needs .[train,capi] and a C compiler. Not
timing-sensitive (the timeouts only separate hangs from slow cases).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _reliability_cli import cli_cases, run_cli_case
from _reliability_soak import soak_c, soak_python
from _results import write_report  # benchmarks/_results.py (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
CATEGORIES = ("correct", "refused valid input", "silently wrong", "unclear error", "crash", "hang")
FLAGS = ("data lost", "partial output", "leaked temp")
SHA = "ab" * 32


# --- the corpus -----------------------------------------------------------------------------------

def manifest_cases() -> list[dict]:
    bad = [  # (path, op, value, expect)
        (["files"], "set", ["model.onnx"], "error"), (["files", "model.onnx", "sha256"], "delete", None, "error"),
        (["files", "model.onnx", "sha256"], "set", "xyz", "error"), (["files", "model.onnx", "bytes"], "set", -1, "error"),
        (["files"], "set", {}, "error"), (["files"], "set", None, "error"),
        (["input"], "set", [], "error"), (["input", "height"], "delete", None, "error"),
        (["input", "height"], "set", -3, "error"), (["input", "height"], "set", 0, "error"),
        (["input", "height"], "set", 2.5, "error"), (["input", "height"], "set", "64", "error"),
        (["input", "height"], "set", 10**12, "error"), (["input", "width"], "set", None, "error"),
        (["input", "channels"], "set", 4, "error"), (["input", "channels"], "set", 1, "error"),
        (["input", "mean"], "set", [0.5, 0.5], "error"), (["input", "mean"], "set", ["a", 0, 0], "error"),
        (["input", "std"], "set", [0.5, 0.0, 0.5], "error"), (["input", "std"], "set", [float("nan")] * 3, "error"),
        (["input", "resize"], "set", "nearest", "error"), (["input", "resize"], "set", "bicubic", "error"),
        (["input", "color"], "set", "bgr", "error"), (["input", "layout"], "set", "NCHW", "error"),
        (["input", "dtype"], "set", "float32", "error"), (["input", "batch"], "set", 4, "error"),
        (["input", "crop"], "set", "center", "error"),
        (["threshold"], "set", None, "error"), (["threshold"], "set", "abc", "error"),
        (["threshold"], "set", float("nan"), "error"), (["threshold"], "set", float("inf"), "error"),
        (["threshold"], "set", -0.5, "error"), (["threshold"], "set", 1.5, "error"), (["threshold"], "set", True, "error"),
        (["threshold"], "delete", None, "error"), (["format_version"], "set", True, "error"),
        (["format_version"], "set", "1", "error"), (["format_version"], "set", 1.0, "error"),
        (["format_version"], "set", 2, "error"), (["format"], "set", "other", "error"),
        (["method"], "set", 3, "error"), (["method"], "delete", None, "error"),
        (["models"], "set", {}, "error"), (["models"], "set", [], "error"),
        (["models", "fp32", "precision"], "set", "fp64", "error"), (["models", "fp32", "file"], "delete", None, "error"),
        (["models", "fp32", "file"], "set", 7, "error"), (["models", "fp32", "file"], "set", "missing.onnx", "error"),
        (["models", "fp32", "opset"], "set", "17", "error"),
        (["calibration"], "set", "x", "error"), (["calibration", "score_std"], "set", -1.0, "error"),
        (["engines"], "set", {"x": {"file": "model.onnx"}}, "error"),
        (["engines"], "set", {"x": {"file": "model.onnx", "precision": "fp16", "gpu": "Orin",
                                    "compute_capability": "sm87", "tensorrt": "8.6"}}, "error"),
        (["config"], "set", [1], "error"),
        # benign: accepted with the same result
        (["metrics"], "set", {"x": {"overall": {"image_auroc": 0.5}}}, "ok"), (["training"], "set", {}, "ok"),
        (["models", "fp32", "future_field"], "set", {"a": 1}, "ok"), (["something_new"], "set", [1, 2], "ok"),
        (["adrt_version"], "set", "9.9.9", "ok"), (["outputs"], "delete", None, "ok"),
    ]
    cases = [{"id": f"manifest-{i:02d}", "family": "manifest", "op": "manifest", "expect": e,
              "mutations": [[p, op, v]], "what": f"{'.'.join(p)} {op} {json.dumps(v)[:40]}"}
             for i, (p, op, v, e) in enumerate(bad)]
    for setup in ("flip_model", "symlink_out", "fifo_listed", "sparse_outside", "model_outside_rel",
                  "model_outside_abs", "wrong_height"):
        muts = [[["files"], "set", {}]] if setup == "flip_model" else []
        cases.append({"id": f"bundle-{setup}", "family": "bundle files", "op": "manifest", "expect": "error",
                      "setup": setup, "mutations": muts, "what": setup + (" + files: {}" if muts else "")})
    return cases + random_manifest_cases(100)


def random_manifest_cases(n: int, seed: int = 0) -> list[dict]:
    """Seeded random replacements of 1-3 fields: either outcome is fine if it is clear and right."""
    import numpy as np

    rng = np.random.default_rng(seed)
    fields = [["threshold"], ["input", "height"], ["input", "width"], ["input", "mean"], ["input", "std"],
              ["input", "resize"], ["input", "color"], ["input", "layout"], ["models", "fp32"],
              ["models", "fp32", "file"], ["files", "model.onnx"], ["format_version"], ["method"], ["calibration"],
              ["engines"], ["metrics"], ["input"], ["files"], ["models"], ["input", "channels"]]
    values = [None, True, False, 0, -1, 1, 2**63, 0.5, -0.0, float("nan"), float("inf"), "", "x", "../x", "/etc",
              [], [1, 2, 3], {}, {"file": "model.onnx"}, {"sha256": SHA}, "nearest", "fp32", [0.5, 0.5, 0.5]]
    out = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        muts = [[fields[int(rng.integers(len(fields)))], "set" if rng.random() < 0.85 else "delete",
                 values[int(rng.integers(len(values)))]] for _ in range(k)]
        out.append({"id": f"random-manifest-{i:03d}", "family": "manifest (random)", "op": "manifest",
                    "expect": "either", "mutations": muts, "what": f"{k} random field(s)"})
    return out


def other_api_cases() -> list[dict]:
    import os as _os

    cpus = _os.cpu_count() or 1
    cases = [{"id": f"zip-{v}", "family": "zip", "op": "zip", "variant": v,
              "expect": "ok" if v in ("valid", "drop_without_close") else "error", "what": v}
             for v in ("valid", "drop_without_close", "crc", "truncated_deflate", "bomb", "symlink_member",
                       "traversal", "absolute", "many_members", "not_zip")]
    for v in (100000, 10000, -1, 0, 2.5, 2**31, True, "2", None, 1, cpus * 4, cpus * 4 + 1):
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= cpus * 4)
        cases.append({"id": f"threads-{v}", "family": "threads", "op": "threads", "value": v,
                      "expect": "ok" if ok else "error", "what": f"threads={v!r}"})
    session = [("backend", None, "error"), ("backend", 3, "error"), ("backend", "gpu", "error"),
               ("backend", "ort-cpu", "ok"), ("precision", None, "error"), ("precision", "fp64", "error"),
               ("precision", 16, "error"), ("run_after_close", None, "error"), ("run_files_str", None, "ok"),
               ("batch_size", 0, "error"), ("batch_size", -1, "error"), ("batch_size", 2.5, "error"),
               ("batch_size", 1, "ok")] + [("array", k, "error") for k in
                                           ("float32", "rgba", "taller", "empty", "2d", "5d", "int16", "nchw", "list",
                                            "none")]
    cases += [{"id": f"session-{w}-{v}", "family": "API misuse", "op": "session", "use": w, "what": f"{w} {v!r}",
               "value": v, "expect": e} for w, v, e in session]
    img = [dict(kind="fifo"), dict(kind="folder"), dict(kind="empty"), dict(kind="huge_header", w=13370, h=13370),
           dict(kind="huge_header", w=100000, h=100000), dict(kind="huge_header", w=9000, h=9000)]
    img += [dict(kind=m, format=f, name=f"x.{f.lower()}") for m, f in
            (("L", "PNG"), ("I;16", "PNG"), ("RGBA", "PNG"), ("RGB", "BMP"), ("1", "PNG"), ("L", "TIFF"))]
    img += [dict(kind="F", format="TIFF", name="x.tif"), dict(kind="I32", format="TIFF", name="x.tif")]
    img += [dict(kind="truncated", format=f, fraction=fr, name=f"x.{f.lower()}") for f in ("PNG", "JPEG", "WEBP")
            for fr in (0.1, 0.5, 0.9)]
    img += [dict(kind="flipped", format=f, n=n, seed=s, name=f"x.{f.lower()}") for f in ("PNG", "JPEG", "TIFF", "GIF")
            for n, s in ((1, 1), (8, 2), (64, 3))]
    img += [dict(kind="random_bytes", n=n, seed=s, name=f"x.{ext}") for s, (n, ext) in
            enumerate([(10, "png"), (100, "jpg"), (1000, "png"), (5000, "tif"), (64, "bmp"), (300, "gif"),
                       (2000, "webp"), (8, "png")])]
    expect_ok = {"L", "I;16", "RGBA", "RGB", "1"}
    for i, c in enumerate(img):
        ok = c["kind"] in expect_ok or (c["kind"] == "huge_header" and c["w"] * c["h"] <= 64_000_000)
        either = c["kind"] in ("flipped", "random_bytes")
        cases.append({"id": f"image-{i:02d}-{c['kind']}", "family": "images", "op": "image",
                      "expect": "either" if either else "ok" if ok else "error",
                      "what": " ".join(f"{k}={v}" for k, v in c.items() if k != "name"), **c})
    return cases


# --- running the API cases in a worker ------------------------------------------------------------

class Worker:
    def __init__(self, python: str, work: Path, env: dict):
        self.args = [python, str(HERE / "_reliability_cases.py"), str(work)]
        self.env, self.cwd = env, work
        self.p = None

    def start(self) -> None:
        self.p = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True, env=self.env, cwd=self.cwd, start_new_session=True)
        if self._line(300) != "@@READY":
            raise SystemExit("the worker did not start")

    def _line(self, timeout: float) -> str | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            ready, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                return None
            line = self.p.stdout.readline()
            if not line:
                return ""                              # the worker died
            if line.startswith("@@"):
                return line.strip()
        return None

    def run(self, case: dict, timeout: float) -> dict:
        if self.p is None or self.p.poll() is not None:
            self.start()
        self.p.stdin.write(json.dumps(case) + "\n")
        self.p.stdin.flush()
        line = self._line(timeout)
        if line and line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
        hung = line is None
        if hung:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        rc = self.p.returncode
        self.p = None
        return {"id": case["id"], "outcome": "hang" if hung else "crash", "returncode": rc}

    def close(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(timeout=30)


def classify(case: dict, res: dict) -> str:
    outcome, expect = res["outcome"], case["expect"]
    if outcome in ("hang", "crash"):
        return outcome
    if outcome == "error":
        if not (res.get("adrt") and res.get("one_line")):
            return "unclear error"
        return "refused valid input" if expect == "ok" else "correct"
    if expect == "error" or not res.get("correct", True):
        return "silently wrong"
    return "correct"


def run_corpus(python: str, work: Path, label: str) -> dict:
    tmp = work / f"tmp-{label}"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    worker = Worker(python, work, env)
    results = []
    for case in manifest_cases() + other_api_cases():
        res = worker.run(case, timeout=30)
        res.update(category=classify(case, res), family=case["family"], what=case["what"], expect=case["expect"])
        res["flags"] = ["leaked temp"] if res.get("leaked") else []
        results.append(res)
        print(f"{label:>8} {case['id']:<40} {res['category']}", file=sys.stderr, flush=True)
    worker.close()
    for case in cli_cases(work):
        res = run_cli_case(case, python, work / f"cli-{label}", env)
        results.append(res)
        print(f"{label:>8} {case['id']:<40} {res['category']} {' '.join(res['flags'])}", file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return summarise(results)


def summarise(results: list[dict]) -> dict:
    families: dict[str, dict] = {}
    for r in results:
        f = families.setdefault(r["family"], {"tried": 0, **{c: 0 for c in CATEGORIES}, **{f: 0 for f in FLAGS}})
        f["tried"] += 1
        f[r["category"]] += 1
        for flag in r["flags"]:
            f[flag] += 1
    total = {"tried": len(results), **{c: sum(f[c] for f in families.values()) for c in CATEGORIES},
             **{g: sum(f[g] for f in families.values()) for g in FLAGS}}
    total["clear errors"] = sum(1 for r in results if r["category"] == "correct" and r["outcome"] == "error")
    # One compact row per case: id, family, what was tried, category, flags, what the user saw.
    cases = [{"id": r["id"], "family": r["family"], "what": r["what"], "category": r["category"], "flags": r["flags"],
              **({"error": f"{r.get('error_type', 'error')}: {r.get('message', '')[:120]}"}
                 if r["outcome"] == "error" else {})} for r in results]
    return {"total": total, "families": families, "cases": cases}


# --- setup and report -----------------------------------------------------------------------------

def prepare(work: Path) -> None:
    from adrt.export.pipeline import export_run
    from adrt.synth import make_dataset
    from adrt.train.fit import train

    data = make_dataset(work / "data", size=64, n_train=20, n_test_good=4, n_test_defect=6, seed=0, overwrite=True)
    run = train("padim", data, work / "run", size=64, seed=0, log=lambda *a, **k: None, overwrite=True)
    export_run(run, work / "bundle", data, overwrite=True)


def to_markdown(report: dict) -> str:
    runs = report["corpus"]
    cols = list(runs)
    lines = ["# Reliability: bad and edge-case inputs, and a soak", "",
             f"{report['date']}, {report['machine']}. Regenerate: `python benchmarks/reliability.py`"
             + (" --baseline-python ..." if len(cols) > 1 else "") + ". Not timing-sensitive.", "",
             "## Corpus", "", "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key in ("tried", "clear errors", *CATEGORIES, *FLAGS):
        lines.append(f"| {key} | " + " | ".join(str(runs[c]["total"][key]) for c in cols) + " |")
    lines += ["", "`correct` counts expected successes with the right result and expected refusals that were a "
              "clear adrt error (`clear errors` of them). Per family (this adrt):", "",
              "| family | tried | correct | refused valid | silently wrong | unclear error | crash | hang | data lost |"
              " partial output | leaked temp |", "|---|" + "---:|" * 10]
    for name, f in runs[cols[0]]["families"].items():
        lines.append(f"| {name} | {f['tried']} | {f['correct']} | {f['refused valid input']} | {f['silently wrong']} | "
                     f"{f['unclear error']} | {f['crash']} | {f['hang']} | {f['data lost']} | {f['partial output']} | "
                     f"{f['leaked temp']} |")
    if len(cols) > 1:
        lines += ["", f"Cases that were not `correct` with {cols[1]}:", ""]
        for r in runs[cols[1]]["cases"]:
            if r["category"] != "correct" or r["flags"]:
                extra = f" ({r['error'][:100]})" if r.get("error") else ""
                lines.append(f"- {r['family']}: {r['what']} -> {r['category']} {' '.join(r['flags'])}{extra}")
    lines += ["", "## Soak", "", "| API | what | n | RSS start MiB | RSS end MiB | RSS max MiB | fds start | fds end |"
              " temp folders left |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for api, s in report.get("soak", {}).items():
        for what, r in s.items():
            lines.append(f"| {api} | {what} | {r['n']} | {r['rss_mib'][0]:.1f} | {r['rss_mib'][-1]:.1f} | "
                         f"{max(r['rss_mib']):.1f} | {r['fds'][0]} | {r['fds'][-1]} | {r.get('temp_left', '-')} |")
    lines += ["", "RSS and fds are sampled every 1/20 of the loop after a warm-up; `runs`: batch-1 runs on one "
              "session; `open/close`: load the .zip bundle, run one image, close."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/reliability"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reliability")
    ap.add_argument("--baseline-python", default=None, help="Also run the corpus with this interpreter's adrt.")
    ap.add_argument("--baseline-label", default="baseline")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--no-soak", action="store_true")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prepare(work)
    report = {"date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "corpus": {"this adrt": run_corpus(sys.executable, work, "this")}}
    if args.baseline_python:
        report["corpus"][args.baseline_label] = run_corpus(args.baseline_python, work, args.baseline_label)
    if not args.no_soak:
        report["soak"] = {"Python": soak_python(work, args.runs, args.cycles),
                          "C": soak_c(work, args.runs, args.cycles)}
    write_report(args.out, report, to_markdown(report))


if __name__ == "__main__":
    main()
