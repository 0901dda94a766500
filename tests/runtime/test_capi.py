"""The C API (adrt.h + libadrt), exercised from compiled C programs.

The library is built once with `adrt build-capi` (which also compiles the example with `cc`);
the C programs here are compiled against it with the command that build prints. Scores and maps
from C must equal the Python runtime's for the same images; bad input must give a status and a
message, never a crash; threads and several handles must give the same numbers as one thread.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")

# Every C test program prints each call as: name, status, adrt_last_error's message (tab-separated).
SHOW_C = r"""static void show(const char *name, int status)
{
    const char *message = "(unset)";
    adrt_last_error(&message);
    printf("%s\t%d\t%s\n", name, status, message);
}
"""

ERRORS_C = r"""
#include <stdio.h>
#include <string.h>
#include "adrt.h"

""" + SHOW_C + r"""
int main(int argc, char **argv)
{
    static uint8_t img[2 * 65 * 64 * 4];
    static float maps[2 * 64 * 64];
    float scores[2], threshold;
    char precision[16];
    const char *good = argv[1], *tampered = argv[2], *version = NULL;
    adrt_handle h = 0;
    int height = 0, width = 0, channels = 0, status;
    const size_t one = 64 * 64 * 3;

    if (argc != 3)
        return 2;
    show("version_null", adrt_version(NULL));
    printf("last_error_null\t%d\t-\n", adrt_last_error(NULL));
    show("version_ok", adrt_version(&version));
    printf("version\t0\t%s\n", version);
    show("open_null_path", adrt_open(NULL, NULL, 0, &h));
    show("open_null_handle", adrt_open(good, NULL, 0, NULL));
    show("open_missing", adrt_open("/nonexistent/bundle", NULL, 0, &h));
    show("open_tampered", adrt_open(tampered, NULL, 0, &h));
    printf("handle_after_failure\t0\t%lld\n", (long long)h);
    show("open_backend", adrt_open(good, "gpu-please", 0, &h));
    show("open_threads", adrt_open(good, NULL, -2, &h));
    show("unopened_input_size", adrt_input_size(0, &height, &width, &channels));
    show("unknown_run", adrt_run(12345, img, one, 1, 64, 64, 3, maps, 64 * 64, scores, 1));
    status = adrt_open(good, "ort-cpu", 1, &h);
    show("open_ok", status);
    if (status != ADRT_OK)
        return 3;
    show("input_size_null", adrt_input_size(h, NULL, &width, &channels));
    show("input_size_ok", adrt_input_size(h, &height, &width, &channels));
    printf("input_size\t0\t%dx%dx%d\n", height, width, channels);
    show("precision_small", adrt_precision(h, precision, 2));
    show("precision_null", adrt_precision(h, NULL, sizeof precision));
    show("precision_ok", adrt_precision(h, precision, sizeof precision));
    printf("precision\t0\t%s\n", precision);
    show("threshold_null", adrt_threshold(h, NULL));
    show("threshold_ok", adrt_threshold(h, &threshold));
    printf("threshold\t0\t%g\n", threshold);
    show("run_null_images", adrt_run(h, NULL, one, 1, 64, 64, 3, maps, 64 * 64, scores, 1));
    show("run_null_scores", adrt_run(h, img, one, 1, 64, 64, 3, maps, 64 * 64, NULL, 1));
    show("run_null_maps", adrt_run(h, img, one, 1, 64, 64, 3, NULL, 64 * 64, scores, 1));
    show("run_images_len", adrt_run(h, img, one - 1, 1, 64, 64, 3, maps, 64 * 64, scores, 1));
    show("run_maps_len", adrt_run(h, img, one, 1, 64, 64, 3, maps, 64 * 64 - 1, scores, 1));
    show("run_scores_len", adrt_run(h, img, 2 * one, 2, 64, 64, 3, maps, 2 * 64 * 64, scores, 1));
    show("run_wrong_height", adrt_run(h, img, 65 * 64 * 3, 1, 65, 64, 3, maps, 64 * 64, scores, 1));
    show("run_wrong_channels", adrt_run(h, img, 64 * 64 * 4, 1, 64, 64, 4, maps, 64 * 64, scores, 1));
    show("run_zero_n", adrt_run(h, img, 0, 0, 64, 64, 3, maps, 64 * 64, scores, 1));
    show("run_negative_width", adrt_run(h, img, one, 1, 64, -64, 3, maps, 64 * 64, scores, 1));
    scores[0] = -1.0f;
    show("run_scores_only", adrt_run(h, img, one, 1, 64, 64, 3, NULL, 0, scores, 1));
    printf("score\t0\t%.9g\n", scores[0]);
    show("run_ok", adrt_run(h, img, 2 * one, 2, 64, 64, 3, maps, 2 * 64 * 64, scores, 2));
    show("close_ok", adrt_close(h));
    show("closed_run", adrt_run(h, img, one, 1, 64, 64, 3, maps, 64 * 64, scores, 1));
    show("closed_precision", adrt_precision(h, precision, sizeof precision));
    show("closed_close", adrt_close(h));
    status = adrt_open(good, NULL, 0, &h);
    printf("reopen\t%d\t%lld\n", status, (long long)h);
    show("reopen_close", adrt_close(h));
    printf("end\t0\t-\n");
    return 0;
}
"""

THREADS_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "adrt.h"

#define T 4
#define K 8
#define PIX (64 * 64)

static const char *bundle;
static uint8_t images[T][PIX * 3];
static float ref_scores[T], ref_maps[T][PIX];

struct job {
    int index, bad, runs, last_status;
    adrt_handle handle;
    float score, map[PIX];
    char message[512];
};
static struct job jobs[T];
static volatile int started;
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;

static int run_one(struct job *j)
{
    return adrt_run(j->handle, images[j->index], PIX * 3, 1, 64, 64, 3, j->map, PIX, &j->score, 1);
}

static void keep_error(struct job *j)
{
    const char *m = "";
    adrt_last_error(&m);
    snprintf(j->message, sizeof j->message, "%s", m);
}

/* Phase 1: every thread opens its own handle at once (the process's first calls), runs K times. */
static void *own_handle(void *arg)
{
    struct job *j = arg;
    if ((j->last_status = adrt_open(bundle, "ort-cpu", 1, &j->handle)) != ADRT_OK) {
        keep_error(j);
        j->bad++;
        return NULL;
    }
    for (int k = 0; k < K; k++)
        if ((j->last_status = run_one(j)) != ADRT_OK) {
            keep_error(j);
            j->bad++;
        }
    return NULL;
}

/* Phase 2: all threads share one handle; each checks every result against the reference. */
static void *shared_handle(void *arg)
{
    struct job *j = arg;
    for (int k = 0; k < K; k++) {
        if ((j->last_status = run_one(j)) != ADRT_OK) {
            keep_error(j);
            j->bad++;
        } else if (j->score != ref_scores[j->index] ||
                   memcmp(j->map, ref_maps[j->index], sizeof j->map) != 0) {
            j->bad++;
        }
        j->runs++;
    }
    return NULL;
}

/* Phase 3: run until the handle is closed under us; the last status must be ADRT_E_HANDLE. */
static void *until_closed(void *arg)
{
    struct job *j = arg;
    for (int k = 0; k < 100000; k++) {
        j->last_status = run_one(j);
        if (j->last_status != ADRT_OK) {
            keep_error(j);
            return NULL;
        }
        if (j->score != ref_scores[j->index])
            j->bad++;
        if (j->runs++ == 0) {
            pthread_mutex_lock(&started_lock);
            started++;
            pthread_mutex_unlock(&started_lock);
        }
    }
    return NULL;
}

static void spawn(void *(*fn)(void *))
{
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, fn, &jobs[i]);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
}

static int report(const char *phase)
{
    int bad = 0;
    for (int i = 0; i < T; i++) {
        printf("%s\tthread %d\tbad %d\truns %d\tstatus %d\t%s\n", phase, i, jobs[i].bad, jobs[i].runs,
               jobs[i].last_status, jobs[i].message);
        bad += jobs[i].bad;
    }
    return bad;
}

int main(int argc, char **argv)
{
    adrt_handle handles[T], shared, doomed;
    int status;

    FILE *f;

    if (argc != 3 || (f = fopen(argv[2], "rb")) == NULL) /* BUNDLE IMAGES.u8 (T×64×64×3 bytes) */
        return 2;
    bundle = argv[1];
    if (fread(images, sizeof images, 1, f) != 1)
        return 2;
    fclose(f);
    for (int i = 0; i < T; i++)
        jobs[i].index = i;
    spawn(own_handle);
    report("own");
    /* The reference: one thread, one handle, image after image. */
    if ((status = adrt_open(bundle, "ort-cpu", 1, &shared)) != ADRT_OK)
        return 3;
    for (int i = 0; i < T; i++)
        if (adrt_run(shared, images[i], PIX * 3, 1, 64, 64, 3, ref_maps[i], PIX, &ref_scores[i], 1))
            return 4;
    int differ = 0;
    for (int i = 0; i < T; i++) {
        differ += jobs[i].score != ref_scores[i] || memcmp(jobs[i].map, ref_maps[i], sizeof jobs[i].map);
        handles[i] = jobs[i].handle;
    }
    printf("own_vs_reference\tdiffer %d\n", differ);
    for (int i = 0; i < T; i++)
        printf("reference\t%d\t%.9g\n", i, ref_scores[i]);

    for (int i = 0; i < T; i++) {
        jobs[i].handle = shared;
        jobs[i].bad = jobs[i].runs = 0;
    }
    spawn(shared_handle);
    report("shared");

    if (adrt_open(bundle, "ort-cpu", 1, &doomed) != ADRT_OK)
        return 5;
    for (int i = 0; i < T; i++) {
        jobs[i].handle = doomed;
        jobs[i].bad = jobs[i].runs = 0;
    }
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, until_closed, &jobs[i]);
    for (int spins = 0; spins < 30000; spins++) { /* until every thread has run once (<= 30 s) */
        pthread_mutex_lock(&started_lock);
        int all = started == T;
        pthread_mutex_unlock(&started_lock);
        if (all)
            break;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    status = adrt_close(doomed);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    printf("close_while_running\tstatus %d\tstarted %d\n", status, started);
    report("closed");

    for (int i = 0; i < T; i++)
        if (adrt_close(handles[i]) != ADRT_OK)
            return 6;
    printf("end\n");
    return adrt_close(shared);
}
"""


@pytest.fixture(scope="module")
def capi(tmp_path_factory) -> Path:
    """libadrt, adrt.h and the compiled example, built by `adrt build-capi` from this Python."""
    pytest.importorskip("cffi")
    out = tmp_path_factory.mktemp("capi")
    p = subprocess.run([sys.executable, "-m", "adrt.cli", "build-capi", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "-ladrt" in p.stdout and (out / "adrt.h").is_file() and (out / "adrt_example").is_file()
    return out


@pytest.fixture(scope="module")
def bundle(runs) -> Path:
    return runs("padim")[1]


def compile_c(capi: Path, name: str, source: str) -> Path:
    from adrt.runtime.capi.build import compile_command

    src = capi / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    exe = capi / name
    cmd = compile_command(src, capi, exe) + ["-Werror"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stderr}"
    return exe


def run_c(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def write_pnm(path: Path, image: np.ndarray) -> Path:
    magic = b"P6" if image.ndim == 3 else b"P5"
    path.write_bytes(magic + b"\n# adrt test\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.tobytes())
    return path


def test_example_scores_and_maps_equal_the_python_runtime(capi, bundle, synth_data, tmp_path):
    import adrt.runtime as rt
    from adrt.data import Dataset
    from adrt.runtime.image import read_image

    images = [read_image(x.path) for x in Dataset.open(synth_data).test]
    assert images[0].shape == (SIZE, SIZE, 3)
    images[1] = images[1].mean(axis=2).astype(np.uint8)  # one gray PGM: replicated to RGB by the example
    paths = [write_pnm(tmp_path / f"{i:02d}.{'pgm' if im.ndim == 2 else 'ppm'}", im) for i, im in enumerate(images)]
    maps_file = tmp_path / "maps.f32"
    p = run_c(capi / "adrt_example", "--threads", 1, "--batch", 4, "--maps", maps_file, bundle, *paths)
    assert p.returncode == 0, p.stderr
    lines = [ln.split("\t") for ln in p.stdout.splitlines() if not ln.startswith("#")]
    assert [ln[0] for ln in lines] == [str(x) for x in paths]
    c_scores = np.array([float(ln[1]) for ln in lines], np.float32)
    c_maps = np.fromfile(maps_file, np.float32).reshape(len(images), SIZE, SIZE)
    assert f"input {SIZE}x{SIZE}x3, fp32, threshold 0.5" in p.stdout

    rgb = np.stack([np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images])
    with rt.load(bundle, threads=1) as s:
        parts = [s.run(rgb[i:i + 4]) for i in range(0, len(rgb), 4)]   # the example's batches
    py_scores = np.concatenate([r.scores for r in parts])
    py_maps = np.concatenate([r.maps for r in parts])
    np.testing.assert_array_equal(c_scores, py_scores)   # %.9g round-trips a float32 exactly
    np.testing.assert_array_equal(c_maps, py_maps)
    assert [ln[2] for ln in lines] == ["anomalous" if v >= 0.5 else "normal" for v in py_scores]
    assert len(set(ln[2] for ln in lines)) == 2      # the test set has both kinds


def test_example_refuses_an_image_of_another_size(capi, bundle, tmp_path):
    img = write_pnm(tmp_path / "big.ppm", np.zeros((SIZE + 1, SIZE, 3), np.uint8))
    p = run_c(capi / "adrt_example", bundle, img)
    assert p.returncode == 2 and f"image is {SIZE}x{SIZE + 1}" in p.stderr and "resize it first" in p.stderr


EXPECTED_ERRORS = {
    "version_null": (1, "adrt_version: version is NULL"),
    "last_error_null": (1, "-"),
    "open_null_path": (1, "adrt_open: bundle_path is NULL; expected the path of a bundle"),
    "open_null_handle": (1, "adrt_open: handle is NULL"),
    "open_missing": (4, "/nonexistent/bundle: no such bundle"),
    "open_tampered": (4, "checksum mismatch for model.onnx"),
    "open_backend": (2, "backend 'gpu-please' is unknown; expected one of ort-cpu, ort-cuda, ort-trt"),
    "open_threads": (2, "threads = -2; expected 0"),
    "unopened_input_size": (3, "adrt_input_size: handle 0 was never opened"),
    "unknown_run": (3, "adrt_run: handle 12345 was never opened"),
    "input_size_null": (1, "adrt_input_size: height is NULL"),
    "precision_small": (7, "adrt_precision: size = 2; expected at least 5"),
    "precision_null": (1, "adrt_precision: buffer is NULL"),
    "threshold_null": (1, "adrt_threshold: threshold is NULL"),
    "run_null_images": (1, "adrt_run: images is NULL"),
    "run_null_scores": (1, "adrt_run: scores is NULL"),
    "run_null_maps": (1, "adrt_run: maps is NULL with maps_len = 4096"),
    "run_images_len": (7, "adrt_run: images_len = 12287; expected n*height*width*channels = 1*64*64*3 = 12288"),
    "run_maps_len": (7, "adrt_run: maps_len = 4095; expected at least n*H*W = 1*64*64 = 4096"),
    "run_scores_len": (7, "adrt_run: scores_len = 1; expected at least n = 2"),
    "run_wrong_height": (6, "expected uint8 N×64×64×3 (NHWC, RGB), got uint8 1×65×64×3"),
    "run_wrong_channels": (6, "got uint8 1×64×64×4"),
    "run_zero_n": (2, "n, height, width, channels = 0, 64, 64, 3; expected all ≥ 1"),
    "run_negative_width": (2, "n, height, width, channels = 1, 64, -64, 3"),
    "closed_run": (3, "adrt_run: handle 1 was closed"),
    "closed_precision": (3, "adrt_precision: handle 1 was closed"),
    "closed_close": (3, "adrt_close: handle 1 was closed"),
}


def test_bad_input_from_c_gives_status_and_message_never_a_crash(capi, bundle, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    model = tampered / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    exe = compile_c(capi, "errors", ERRORS_C)
    p = run_c(exe, bundle, tampered)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {name: (int(status), msg) for name, status, msg in (ln.split("\t", 2) for ln in p.stdout.splitlines())}
    assert "end" in rows, p.stdout    # the program got through every bad call
    for name, (status, text) in EXPECTED_ERRORS.items():
        assert rows[name][0] == status, (name, rows[name])
        assert text in rows[name][1], (name, rows[name])
    for ok in ("version_ok", "open_ok", "input_size_ok", "precision_ok", "threshold_ok", "run_scores_only",
               "run_ok", "close_ok", "reopen_close"):
        assert rows[ok] == (0, ""), (ok, rows[ok])   # success clears the thread's last error
    from adrt._version import __version__

    assert rows["version"][1] == __version__
    assert rows["handle_after_failure"][1] == "0"
    assert rows["input_size"][1] == f"{SIZE}x{SIZE}x3"
    assert rows["precision"][1] == "fp32" and float(rows["threshold"][1]) == 0.5
    assert 0.0 <= float(rows["score"][1]) <= 1.0
    assert rows["reopen"][0] == 0 and int(rows["reopen"][1]) > 1   # handle numbers are never reused


def test_several_handles_and_one_handle_from_several_threads(capi, bundle, synth_data, tmp_path):
    import adrt.runtime as rt
    from adrt.data import Dataset
    from adrt.runtime.image import read_image

    test = Dataset.open(synth_data).test
    images = np.stack([read_image(x.path) for x in test[:2] + test[-2:]])   # two good, two defects
    raw = tmp_path / "images.u8"
    raw.write_bytes(images.tobytes())
    with rt.load(bundle, threads=1) as s:
        expect = [s.run(im).scores[0] for im in images]
    exe = compile_c(capi, "threads", THREADS_C)
    p = run_c(exe, bundle, raw)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.rstrip().endswith("end"), out
    rows = [ln.split("\t") for ln in out.splitlines()]
    by_phase = {}
    for r in rows:
        by_phase.setdefault(r[0], []).append(r)
    assert len(by_phase["own"]) == 4 and all(r[2] == "bad 0" and r[4] == "status 0" for r in by_phase["own"]), out
    assert by_phase["own_vs_reference"] == [["own_vs_reference", "differ 0"]], out
    assert [np.float32(r[2]) for r in by_phase["reference"]] == expect, out    # the Python runtime's scores
    assert all(r[2] == "bad 0" and r[3] == "runs 8" for r in by_phase["shared"]), out
    # Closing under running threads: close succeeds, each thread's next call is refused cleanly.
    assert by_phase["close_while_running"] == [["close_while_running", "status 0", "started 4"]], out
    for r in by_phase["closed"]:
        assert r[2] == "bad 0" and int(r[3].split()[1]) >= 1, out
        assert r[4] == "status 3" and "was closed" in r[5], out


def test_the_library_never_imports_torch(capi, bundle, tmp_path):
    """A `torch` that leaves a mark when imported, first on the embedded Python's path."""
    trap = tmp_path / "trap"
    (trap / "torch").mkdir(parents=True)
    marker = tmp_path / "torch-was-imported"
    (trap / "torch" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": str(trap)}
    # The trap works: a plain Python with this environment springs it.
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    assert marker.exists()
    marker.unlink()
    img = write_pnm(tmp_path / "a.ppm", np.full((SIZE, SIZE, 3), 128, np.uint8))
    p = run_c(capi / "adrt_example", bundle, img, env=env)
    assert p.returncode == 0, p.stderr
    assert not marker.exists(), "libadrt imported torch"


def test_a_broken_python_side_is_an_error_not_a_crash(capi, bundle, tmp_path):
    """An `adrt` that cannot be imported in the embedded interpreter: ADRT_E_PYTHON (8) with the cause."""
    fake = tmp_path / "fake"
    (fake / "adrt").mkdir(parents=True)
    (fake / "adrt" / "__init__.py").write_text("raise ImportError('adrt is broken here')\n")
    img = write_pnm(tmp_path / "a.ppm", np.zeros((SIZE, SIZE, 3), np.uint8))
    p = run_c(capi / "adrt_example", bundle, img, env={**os.environ, "PYTHONPATH": str(fake)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "adrt_open failed (status 8)" in p.stderr and "ImportError: adrt is broken here" in p.stderr


def test_the_library_runs_as_the_building_python_whatever_the_path(capi, bundle, tmp_path):
    """A host started with a bare environment (no venv on PATH) still finds this adrt install."""
    img = write_pnm(tmp_path / "a.ppm", np.zeros((SIZE, SIZE, 3), np.uint8))
    p = run_c(capi / "adrt_example", bundle, img, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert "\tnormal" in p.stdout or "\tanomalous" in p.stdout


OPEN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "adrt.h"

int main(int argc, char **argv)   /* OPEN_C THREADS BUNDLE...: one line per bundle, status and message */
{
    int threads = atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        adrt_handle h = 0;
        const char *message = "";
        int status = adrt_open(argv[i], NULL, threads, &h);
        adrt_last_error(&message);
        printf("%s\t%d\t%s\n", argv[i], status, message);
        if (status == ADRT_OK)
            adrt_close(h);
    }
    return 0;
}
"""


def test_invalid_bundles_and_thread_counts_get_their_own_status_codes(capi, bundle, tmp_path):
    """Issue #17: manifest errors surfaced as ADRT_E_INTERNAL; now each is ADRT_E_BUNDLE with the
    field named, and thread counts out of 1..4 per CPU are ADRT_E_ARGUMENT."""
    import json
    import zipfile

    def variant(name, change):
        d = tmp_path / name
        shutil.copytree(bundle, d)
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
        return d

    cases = {
        variant("files_list", lambda m: m.update(files=["model.onnx"])): "files: expected a JSON object, got list",
        variant("no_sha", lambda m: m["files"]["model.onnx"].pop("sha256")): "lacks 'sha256'",
        variant("threshold", lambda m: m.update(threshold="abc")): "threshold='abc': expected a finite number",
        variant("nearest", lambda m: m["input"].update(resize="nearest")): "input.resize='nearest'",
        variant("outside", lambda m: m["models"]["fp32"].update(file="../x/model.onnx")):
            "expected a relative file name inside the bundle",
        variant("unlisted", lambda m: m.update(files={})): "is not listed in files",
        variant("io", lambda m: m["input"].update(height=32)): "the manifest says uint8 N×32×64×3",
    }
    z = tmp_path / "crc.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as f:
        for p in bundle.iterdir():
            f.write(p, p.name)
    data = bytearray(z.read_bytes())
    data[len(data) // 2] ^= 0xFF
    z.write_bytes(bytes(data))
    cases[z] = "corrupt or unreadable zip"
    exe = compile_c(capi, "open_cases", OPEN_C)
    p = run_c(exe, 0, *cases)
    assert p.returncode == 0, p.stderr
    rows = {Path(path): (int(status), msg) for path, status, msg in (ln.split("\t", 2) for ln in p.stdout.splitlines())}
    for path, text in cases.items():
        assert rows[Path(path)][0] == 4, (path, rows[Path(path)])         # ADRT_E_BUNDLE, not 9 (INTERNAL)
        assert text in rows[Path(path)][1], (path, rows[Path(path)])
    from adrt.runtime.limits import max_threads

    for threads, status in ((100000, 2), (max_threads() + 1, 2), (-1, 2), (max_threads(), 0), (1, 0)):
        p = run_c(exe, threads, bundle)
        got = int(p.stdout.split("\t")[1])
        assert got == status, (threads, p.stdout)
        if status:
            assert f"expected 0 (ONNX Runtime's default) or a thread count from 1 to {max_threads()}" in p.stdout


THRESHOLDS_C = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "adrt.h"

""" + SHOW_C + r"""
int main(int argc, char **argv)
{
    adrt_handle h = 0;
    int height, width, channels, i, n, status;
    float t = 0.0f, pt = 0.0f, *maps, *raw_maps, scores[8], raw_scores[8];
    uint8_t *images, labels[8], *masks;
    adrt_outputs out = {0};
    FILE *f;
    size_t one;

    if (argc != 4 || adrt_open(argv[1], NULL, 1, &h) != ADRT_OK)
        return 2;
    n = atoi(argv[3]);
    adrt_input_size(h, &height, &width, &channels);
    one = (size_t)height * width * channels;
    images = malloc(one * n);
    maps = malloc(sizeof(float) * height * width * n);
    raw_maps = malloc(sizeof(float) * height * width * n);
    masks = malloc((size_t)height * width * n);
    f = fopen(argv[2], "rb");
    if (!f || fread(images, 1, one * n, f) != one * n)
        return 3;
    fclose(f);
    show("pixel_threshold_null", adrt_pixel_threshold(h, NULL));
    adrt_threshold(h, &t);
    adrt_pixel_threshold(h, &pt);
    printf("default\t0\t%g %g\n", t, pt);
    show("set_nan", adrt_set_thresholds(h, NAN, 0.5f));
    show("set_zero", adrt_set_thresholds(h, 0.0f, 0.5f));
    show("set_one", adrt_set_thresholds(h, 0.5f, 1.0f));
    show("set_inf", adrt_set_thresholds(h, 0.5f, INFINITY));
    show("set_negative", adrt_set_thresholds(h, -0.2f, 0.5f));
    show("set_closed_handle", adrt_set_thresholds(999, 0.5f, 0.5f));
    adrt_threshold(h, &t);
    adrt_pixel_threshold(h, &pt);
    printf("after_bad\t0\t%g %g\n", t, pt);
    show("set_ok", adrt_set_thresholds(h, (float)atof("0.3"), (float)atof("0.7")));
    adrt_threshold(h, &t);
    adrt_pixel_threshold(h, &pt);
    printf("after_set\t0\t%.9g %.9g\n", t, pt);
    show("outputs_null", adrt_run_outputs(h, images, one * n, n, height, width, channels, NULL));
    out.labels = labels;
    out.labels_len = 0;
    out.raw_scores = NULL;
    out.raw_scores_len = 4;
    show("outputs_null_buffer", adrt_run_outputs(h, images, one * n, n, height, width, channels, &out));
    out.raw_scores = raw_scores;
    out.raw_scores_len = n;
    out.labels_len = n - 1;
    show("outputs_short_labels", adrt_run_outputs(h, images, one * n, n, height, width, channels, &out));
    out.labels_len = n;
    out.maps = maps; out.maps_len = (size_t)height * width * n;
    out.scores = scores; out.scores_len = n;
    out.raw_maps = raw_maps; out.raw_maps_len = (size_t)height * width * n;
    out.masks = masks; out.masks_len = (size_t)height * width * n;
    status = adrt_run_outputs(h, images, one * n, n, height, width, channels, &out);
    show("outputs_ok", status);
    for (i = 0; i < n; i++) {
        size_t j, count = 0;
        for (j = 0; j < (size_t)height * width; j++)
            count += masks[(size_t)i * height * width + j];
        printf("image\t%d\t%.9g %.9g %d %zu %.9g\n", i, scores[i], raw_scores[i], labels[i], count,
               raw_maps[(size_t)i * height * width]);
    }
    show("close", adrt_close(h));
    return 0;
}
"""


def test_thresholds_set_from_c_and_every_output_equal_python(capi, bundle, synth_data, tmp_path):
    import adrt.runtime as rt
    from adrt.data import Dataset, load_images

    ds = Dataset.open(synth_data)
    imgs = load_images([s.path for s in ds.test][:4] + [s.path for s in ds.test][-4:], SIZE, SIZE)
    raw = tmp_path / "images.u8"
    raw.write_bytes(imgs.tobytes())
    exe = compile_c(capi, "thresholds", THRESHOLDS_C)
    p = run_c(exe, bundle, raw, len(imgs))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {}
    for ln in p.stdout.splitlines():
        name, status, msg = ln.split("\t", 2)
        rows.setdefault(name, []).append((int(status), msg))
    assert rows["pixel_threshold_null"][0] == (1, "adrt_pixel_threshold: pixel_threshold is NULL; expected a "
                                                  "float * to receive the pixel threshold")
    assert rows["default"][0][1] == "0.5 0.5"
    for bad, text in (("set_nan", "threshold=nan"), ("set_zero", "threshold=0.0"), ("set_one", "pixel_threshold=1.0"),
                      ("set_inf", "pixel_threshold=inf"), ("set_negative", "threshold=-0.2")):
        status, msg = rows[bad][0]
        assert status == 2 and text in msg and "expected a finite number in (0.0, 1.0)" in msg, (bad, msg)
    assert rows["set_closed_handle"][0][0] == 3
    assert rows["after_bad"][0][1] == "0.5 0.5"           # a refused value changes nothing
    assert rows["set_ok"][0] == (0, "")
    t, pt = (float(x) for x in rows["after_set"][0][1].split())
    assert np.float32(t) == np.float32(0.3) and np.float32(pt) == np.float32(0.7)
    assert rows["outputs_null"][0][0] == 1 and "outputs is NULL" in rows["outputs_null"][0][1]
    assert rows["outputs_null_buffer"][0] == (1, "adrt_run_outputs: outputs->raw_scores is NULL with "
                                                 "outputs->raw_scores_len = 4; expected a buffer of at least n floats, "
                                                 "or length 0 to skip it")
    assert rows["outputs_short_labels"][0] == (7, f"adrt_run_outputs: labels_len = {len(imgs) - 1}; expected at "
                                                  f"least n = {len(imgs)} bytes")
    assert rows["outputs_ok"][0] == (0, "")
    with rt.load(bundle, threads=1, threshold=float(np.float32(0.3)), pixel_threshold=float(np.float32(0.7))) as s:
        r = s.run(imgs)
    got = [msg.split() for _, msg in rows["image"]]
    assert len(got) == len(imgs)
    for i, (score, raw_score, label, n_mask, raw_map0) in enumerate(got):
        assert np.float32(score) == r.scores[i] and np.float32(raw_score) == r.raw_scores[i]
        assert np.float32(raw_map0) == r.raw_maps[i, 0, 0]
        assert int(label) == int(r.labels[i]) == int(r.scores[i] >= np.float32(0.3))
        assert int(n_mask) == int(r.masks[i].sum()) == int((r.maps[i] >= np.float32(0.7)).sum())
    assert {int(g[2]) for g in got} == {0, 1}, "pick images so that both labels occur"


PAIR_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "adrt.h"

/* argv: bundle, n, images file, references file. Prints the input count, then per image its score;
 * then the status of adrt_run on this bundle (which takes two buffers) and of bad pair calls. */
""" + SHOW_C + r"""
int main(int argc, char **argv)
{
    adrt_handle h;
    int n, count = 0, height, width, channels, i;
    size_t len;
    uint8_t *images, *refs;
    float *maps, *scores;
    FILE *f;

    if (argc != 5 || adrt_open(argv[1], NULL, 1, &h) != ADRT_OK)
        return 2;
    n = atoi(argv[2]);
    show("input_count", adrt_input_count(h, &count));
    printf("count\t%d\n", count);
    show("input_count_null", adrt_input_count(h, NULL));
    adrt_input_size(h, &height, &width, &channels);
    len = (size_t)n * height * width * channels;
    images = malloc(len);
    refs = malloc(len);
    maps = malloc(sizeof(float) * n * height * width);
    scores = malloc(sizeof(float) * n);
    f = fopen(argv[3], "rb");
    if (fread(images, 1, len, f) != len) return 3;
    fclose(f);
    f = fopen(argv[4], "rb");
    if (fread(refs, 1, len, f) != len) return 3;
    fclose(f);
    show("run_pair", adrt_run_pair(h, images, len, refs, len, n, height, width, channels, maps,
                                   (size_t)n * height * width, scores, n));
    for (i = 0; i < n; i++)
        printf("score\t%.9g\t%.9g\n", scores[i], maps[(size_t)i * height * width + 5 * width + 7]);
    show("run_one_buffer", adrt_run(h, images, len, n, height, width, channels, maps,
                                    (size_t)n * height * width, scores, n));
    show("pair_null_refs", adrt_run_pair(h, images, len, NULL, len, n, height, width, channels, maps,
                                         (size_t)n * height * width, scores, n));
    show("pair_refs_len", adrt_run_pair(h, images, len, refs, len - 1, n, height, width, channels, maps,
                                        (size_t)n * height * width, scores, n));
    adrt_close(h);
    return 0;
}
"""


def test_two_buffer_runs_from_c_equal_the_python_runtime(capi, paired_run, pair_data, bundle, tmp_path):
    import adrt.runtime as rt
    from adrt.data import Dataset, load_images
    from adrt.runtime.pairs import find_references

    exe = compile_c(capi, "pair", PAIR_C)
    paths = [s.path for s in Dataset.open(pair_data, references=True).test]
    x = load_images(paths, SIZE, SIZE)
    r = load_images(find_references(paths), SIZE, SIZE)
    x.tofile(tmp_path / "x.u8")
    r.tofile(tmp_path / "r.u8")
    p = run_c(exe, paired_run[1], len(x), tmp_path / "x.u8", tmp_path / "r.u8")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln.split("\t") for ln in p.stdout.splitlines()]
    status = {ln[0]: (int(ln[1]), ln[2]) for ln in lines if ln[0] not in ("count", "score")}
    assert ["2"] == [ln[1] for ln in lines if ln[0] == "count"] and status["input_count"][0] == 0
    assert status["input_count_null"][0] == 1
    assert status["run_pair"] == (0, "")
    with rt.load(paired_run[1], threads=1) as s:
        py = s.run(x, references=r)
    c = np.array([[float(ln[1]), float(ln[2])] for ln in lines if ln[0] == "score"], np.float32)
    np.testing.assert_array_equal(c[:, 0], py.scores)
    np.testing.assert_array_equal(c[:, 1], py.maps[:, 5, 7])
    assert status["run_one_buffer"][0] == 6 and "adrt_run_pair" in status["run_one_buffer"][1]
    assert status["pair_null_refs"][0] == 1 and "references" in status["pair_null_refs"][1]
    assert status["pair_refs_len"][0] == 7 and "references_len" in status["pair_refs_len"][1]
    # A one-input bundle refuses the second buffer.
    p = run_c(exe, bundle, len(x), tmp_path / "x.u8", tmp_path / "r.u8")
    lines = {ln.split("\t")[0]: ln.split("\t") for ln in p.stdout.splitlines()}
    assert lines["count"][1] == "1" and lines["run_pair"][1] == "6" and "use adrt_run" in lines["run_pair"][2]
