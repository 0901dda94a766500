"""The soak of benchmarks/reliability.py: RSS and open file descriptors of one process over many
batch-1 runs on one session and many open/run/close cycles of a .zip bundle, from Python and from
C (libadrt). Each soak runs in a fresh process; samples come from /proc/self."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

PY_SOAK = r"""
import gc, json, os, sys, tempfile
import numpy as np
import adrt.runtime as rt

def sample():
    rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')][0] / 1024
    return rss, len(os.listdir('/proc/self/fd'))

bundle, zipped, runs, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
out = {}
with rt.load(bundle, threads=1) as s:
    for _ in range(100):
        s.run(x)
    rss, fds = [], []
    for i in range(runs):
        s.run(x)
        if i % (runs // 20) == 0 or i == runs - 1:
            r, f = sample(); rss.append(r); fds.append(f)
out["runs"] = {"n": runs, "rss_mib": rss, "fds": fds}
tmp = tempfile.gettempdir()
before = set(os.listdir(tmp))
rss, fds = [], []
for i in range(cycles):
    s = rt.load(zipped, threads=1)
    s.run(x)
    s.close()
    if i % (cycles // 20) == 0 or i == cycles - 1:
        gc.collect(); r, f = sample(); rss.append(r); fds.append(f)
out["open/close (.zip)"] = {"n": cycles, "rss_mib": rss, "fds": fds,
                            "temp_left": len([n for n in set(os.listdir(tmp)) - before if n.startswith("adrt-")])}
print(json.dumps(out))
"""

C_SOAK = r"""
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "adrt.h"

static double rss_mib(void)
{
    char line[256];
    double kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = atof(line + 6);
    if (f)
        fclose(f);
    return kib / 1024.0;
}

static int fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    while (d && readdir(d))
        n++;
    if (d)
        closedir(d);
    return n - 3; /* ".", ".." and the DIR's own descriptor */
}

int main(int argc, char **argv) /* soak BUNDLE ZIP RUNS CYCLES */
{
    static unsigned char img[64 * 64 * 3];
    static float map[64 * 64];
    float score;
    adrt_handle h;
    int runs = atoi(argv[3]), cycles = atoi(argv[4]);
    if (argc != 5 || adrt_open(argv[1], NULL, 1, &h) != ADRT_OK)
        return 2;
    for (int i = 0; i < 100; i++)
        adrt_run(h, img, sizeof img, 1, 64, 64, 3, map, 64 * 64, &score, 1);
    printf("{\"runs\": {\"n\": %d, \"rss_mib\": [", runs);
    for (int i = 0, first = 1; i < runs; i++) {
        if (adrt_run(h, img, sizeof img, 1, 64, 64, 3, map, 64 * 64, &score, 1) != ADRT_OK)
            return 3;
        if (i % (runs / 20) == 0 || i == runs - 1) {
            printf("%s[%.2f, %d]", first ? "" : ", ", rss_mib(), fds());
            first = 0;
        }
    }
    adrt_close(h);
    printf("]}, \"open/close (.zip)\": {\"n\": %d, \"rss_mib\": [", cycles);
    for (int i = 0, first = 1; i < cycles; i++) {
        if (adrt_open(argv[2], NULL, 1, &h) != ADRT_OK)
            return 4;
        adrt_run(h, img, sizeof img, 1, 64, 64, 3, map, 64 * 64, &score, 1);
        adrt_close(h);
        if (i % (cycles / 20) == 0 || i == cycles - 1) {
            printf("%s[%.2f, %d]", first ? "" : ", ", rss_mib(), fds());
            first = 0;
        }
    }
    printf("]}}\n");
    return 0;
}
"""


def _zip(work: Path) -> Path:
    z = work / "bundle.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
        for p in sorted((work / "bundle").rglob("*")):
            f.write(p, "bundle/" + str(p.relative_to(work / "bundle")))
    return z


def _temp_env(work: Path, name: str) -> tuple[dict, Path]:
    tmp = work / name
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "OMP_WAIT_POLICY": "PASSIVE"}, tmp


def soak_python(work: Path, runs: int, cycles: int) -> dict:
    env, _ = _temp_env(work, "tmp-soak-py")
    p = subprocess.run([sys.executable, "-c", PY_SOAK, str(work / "bundle"), str(_zip(work)), str(runs), str(cycles)],
                       capture_output=True, text=True, env=env, cwd=work, timeout=3600)
    if p.returncode:
        raise SystemExit(f"python soak failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def soak_c(work: Path, runs: int, cycles: int) -> dict:
    from adrt.runtime.capi.build import compile_command

    capi = work / "capi"
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "build-capi", "--out", str(capi)], capture_output=True,
                       text=True, cwd=work)
    if p.returncode or shutil.which("cc") is None:
        return {"skipped": {"n": 0, "rss_mib": [0.0], "fds": [0], "reason": p.stderr[-500:]}}
    src = capi / "soak.c"
    src.write_text(textwrap.dedent(C_SOAK))
    exe = capi / "soak"
    subprocess.run(compile_command(src, capi, exe), check=True, capture_output=True)
    env, tmp = _temp_env(work, "tmp-soak-c")
    p = subprocess.run([str(exe), str(work / "bundle"), str(_zip(work)), str(runs), str(cycles)], capture_output=True,
                       text=True, env=env, timeout=3600)
    if p.returncode:
        raise SystemExit(f"C soak failed ({p.returncode}): {p.stderr[-2000:]}")
    raw = json.loads(p.stdout)
    out = {}
    for what, r in raw.items():
        out[what] = {"n": r["n"], "rss_mib": [s[0] for s in r["rss_mib"]], "fds": [s[1] for s in r["rss_mib"]]}
    # adrt's extraction folders only (onnxruntime itself writes $TMPDIR/.ses)
    out["open/close (.zip)"]["temp_left"] = len([p for p in tmp.iterdir() if p.name.startswith("adrt-")])
    return out
