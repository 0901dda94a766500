"""Regression corpus of issue #17 (runtime side): bundles that try to escape their checksums or
folder, manifests of every wrong shape, unbounded threads, zip bombs and leaks, huge images, FIFOs,
and API misuse. Each case failed (or hung, or leaked) before the fix; each must now be an adrt
error naming the value, or a correct result."""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

from adrt.errors import AdrtError, BackendError, BundleError, ClosedError, DataError, InputError

from tests.conftest import SIZE


@pytest.fixture
def bundle(runs, tmp_path):
    """A private copy of the PaDiM bundle that tests may damage."""
    _, b = runs("padim")
    dst = tmp_path / "bundle"
    shutil.copytree(b, dst)
    return dst


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle, m):
    (bundle / "manifest.json").write_text(json.dumps(m))


def _flip_byte(path, at=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _load(bundle, **kw):
    import adrt.runtime as rt

    return rt.load(bundle, **kw)


# --- 2. checksums cannot be bypassed, paths cannot leave the bundle ------------------------------

def test_a_model_missing_from_files_is_refused_not_loaded_unchecked(bundle):
    m = _manifest(bundle)
    m["files"] = {}
    _write(bundle, m)
    _flip_byte(bundle / "model.onnx")          # before: loaded and ran with raw scores off by 0.20
    with pytest.raises(BundleError, match=r"models\['fp32'\]\.file='model.onnx' is not listed in files"):
        _load(bundle)


@pytest.mark.parametrize("file", ["../outside/model.onnx", "/tmp/model.onnx", "sub/../../model.onnx",
                                  "./model.onnx", "C:/model.onnx", "a\\..\\model.onnx"])
def test_a_model_path_outside_the_bundle_is_refused(bundle, tmp_path, file):
    (tmp_path / "outside").mkdir()
    shutil.copy(bundle / "model.onnx", tmp_path / "outside" / "model.onnx")
    m = _manifest(bundle)
    m["models"]["fp32"]["file"] = file
    m["files"][file] = m["files"].pop("model.onnx")
    _write(bundle, m)
    with pytest.raises(BundleError, match="expected a relative file name inside the bundle"):
        _load(bundle)


def test_a_listed_path_outside_the_bundle_is_refused_before_hashing(bundle, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:               # sparse 4 GiB: hashing it took 12.8 s before
        f.truncate(4 << 30)
    m = _manifest(bundle)
    m["files"]["../big.bin"] = {"sha256": "0" * 64, "bytes": 4 << 30}
    _write(bundle, m)
    t0 = time.perf_counter()
    with pytest.raises(BundleError) as e:
        _load(bundle)
    assert time.perf_counter() - t0 < 5
    assert "'../big.bin'" in str(e.value) and "inside the bundle" in str(e.value)
    assert "checksum" not in str(e.value)                  # nothing of the outside file was hashed


def test_a_symlink_leaving_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "model.onnx", outside)
    os.symlink(outside, bundle / "model.onnx")
    with pytest.raises(BundleError, match="leads outside the bundle"):
        _load(bundle)


def test_a_symlink_inside_the_bundle_is_fine(bundle):
    (bundle / "models").mkdir()
    shutil.move(bundle / "model.onnx", bundle / "models" / "real.onnx")
    os.symlink("models/real.onnx", bundle / "model.onnx")
    with _load(bundle) as s:
        assert s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8)).scores.shape == (1,)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_listed_fifo_is_refused_without_hanging(bundle):
    os.mkfifo(bundle / "pipe.bin")
    m = _manifest(bundle)
    m["files"]["pipe.bin"] = {"sha256": "0" * 64, "bytes": 0}
    _write(bundle, m)
    with pytest.raises(BundleError, match="pipe.bin listed in the manifest is not a regular file"):
        _load(bundle)


def test_a_size_mismatch_is_refused_before_hashing(bundle):
    m = _manifest(bundle)
    m["files"]["model.onnx"]["bytes"] += 1
    _write(bundle, m)
    with pytest.raises(BundleError, match=r"model.onnx is \d+ bytes, the manifest records \d+"):
        _load(bundle)


# --- 3. manifests are validated ------------------------------------------------------------------

def _set(m, path, value):
    d = m
    for k in path[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value


_DELETE = object()

MANIFEST_CASES = [
    (("files",), ["model.onnx"], r"files: expected a JSON object, got list"),
    (("files", "model.onnx", "sha256"), _DELETE, r"files\['model.onnx'\]: lacks 'sha256'"),
    (("files", "model.onnx", "sha256"), "xyz", r"sha256='xyz': expected 64 lower-case hex digits"),
    (("input", "height"), _DELETE, r"input: lacks 'height'"),
    (("input", "height"), -3, r"input.height=-3: expected an integer in \[1, 16384\]"),
    (("input", "height"), 2.5, r"input.height=2.5: expected an integer"),
    (("input", "width"), "64", r"input.width='64': expected an integer"),
    (("input", "channels"), 4, r"input.channels=4: expected 3"),
    (("input", "mean"), [0.5, 0.5], r"input.mean=\[0.5, 0.5\]: expected 3 numbers"),
    (("input", "std"), [0.5, 0.0, 0.5], r"input.std\[1\]=0.0: expected a finite number > 0"),
    (("input", "resize"), "nearest", r"input.resize='nearest': expected one of bilinear"),
    (("input", "color"), "bgr", r"input.color='bgr': expected one of rgb"),
    (("input", "layout"), "NCHW", r"input.layout='NCHW': expected one of NHWC"),
    (("input", "dtype"), "float32", r"input.dtype='float32': expected one of uint8"),
    (("input", "crop"), "center", r"input: unknown field\(s\) 'crop'"),
    (("threshold",), None, r"threshold=None: expected a finite number"),
    (("threshold",), "abc", r"threshold='abc': expected a finite number"),
    (("threshold",), float("nan"), r"threshold=nan: expected a finite number in \(0.0, 1.0\)"),
    (("threshold",), 1.5, r"threshold=1.5: expected a finite number in \(0.0, 1.0\)"),
    (("threshold",), True, r"threshold=True: expected a finite number"),
    (("format_version",), True, r"bundle format version True"),
    (("format_version",), "1", r"bundle format version '1'"),
    (("format",), "something", r"not an adrt bundle manifest \(format 'something'"),
    (("method",), 3, r"method=3: expected a non-empty string"),
    (("models",), {}, r"models: no 'fp32' entry"),
    (("models", "fp32", "precision"), "fp64", r"precision='fp64': expected one of fp32, fp16, int8"),
    (("models", "fp32", "file"), _DELETE, r"models\['fp32'\]: lacks 'file'"),
    (("models", "fp32", "opset"), "17", r"models\['fp32'\]\.opset='17': expected an integer >= 1"),
    (("calibration", "score_std"), -1.0, r"calibration.score_std=-1.0: expected a finite number > 0"),
    (("engines",), {"x": {"file": "model.onnx"}}, r"engines\['x'\]: lacks 'precision'"),
    (("config",), [1], r"config: expected a JSON object"),
]


@pytest.mark.parametrize("path, value, match", MANIFEST_CASES, ids=[".".join(c[0]) + "=" + repr(c[1])[:20]
                                                                    for c in MANIFEST_CASES])
def test_an_invalid_manifest_is_a_bundle_error_naming_the_field(bundle, path, value, match):
    m = _manifest(bundle)
    _set(m, path, value)
    _write(bundle, m)
    with pytest.raises(BundleError, match=match):
        _load(bundle)


def test_unknown_fields_in_model_and_engine_entries_are_kept(bundle):
    """Forward compatibility inside format 1 (e.g. an opset-17 variant for TensorRT 8.6)."""
    from adrt.runtime.bundle import open_bundle, write_manifest

    m = _manifest(bundle)
    shutil.copy(bundle / "model.onnx", bundle / "model.opset17.onnx")
    m["models"]["fp32"]["future_field"] = {"x": 1}
    m["models"]["fp32-opset17"] = {"file": "model.opset17.onnx", "precision": "fp32", "opset": 17, "target": "trt8.6"}
    m["files"]["model.opset17.onnx"] = {}
    m["something_new"] = [1, 2]
    write_manifest(bundle, m)
    b = open_bundle(bundle)
    assert b.manifest["models"]["fp32"]["future_field"] == {"x": 1}
    assert b.manifest["models"]["fp32-opset17"]["target"] == "trt8.6" and b.manifest["something_new"] == [1, 2]
    with _load(bundle, precision="fp32-opset17") as s:
        assert s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8)).maps.shape == (1, SIZE, SIZE)


def test_a_model_whose_io_differ_from_the_manifest_fails_at_load(bundle):
    from adrt.runtime.bundle import write_manifest

    m = _manifest(bundle)
    m["input"]["height"] = m["input"]["width"] = 32
    write_manifest(bundle, m)
    with pytest.raises(BundleError, match=r"input 'image' is uint8 N×64×64×3; the manifest says uint8 N×32×32×3"):
        _load(bundle)                                   # before: only at the first run


def _foreign_model(path, map_shape, score_shape):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    f = helper.make_tensor_value_info
    n = "n"
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=0),
             helper.make_node("ReduceMean", ["m"], ["s"], axes=[1], keepdims=0)]   # N×W: the wrong map shape
    for out, src in (("anomaly_map", "s"), ("raw_map", "s"), ("score", "s"), ("raw_score", "s")):
        nodes.append(helper.make_node("Identity", [src], [out]))
    def shape(rest):
        return [n] + rest

    graph = helper.make_graph(
        nodes, "foreign", [f("image", TensorProto.UINT8, [n, SIZE, SIZE, 3])],
        [f("anomaly_map", TensorProto.FLOAT, shape(map_shape)), f("score", TensorProto.FLOAT, shape(score_shape)),
         f("raw_map", TensorProto.FLOAT, shape(map_shape)), f("raw_score", TensorProto.FLOAT, shape(score_shape))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_foreign_model_with_adrt_names_but_wrong_shapes_is_refused(bundle):
    from adrt.runtime.bundle import write_manifest

    _foreign_model(bundle / "model.onnx", [SIZE], [SIZE])
    write_manifest(bundle, _manifest(bundle))
    with pytest.raises(BundleError, match=r"output 'anomaly_map' is float32 N×64; expected float32 N×64×64"):
        _load(bundle)



def test_outputs_of_the_wrong_shape_are_refused_at_run(bundle):
    """Where the graph's shapes are dynamic the load check cannot see them: run() checks what came out."""
    with _load(bundle) as s:
        real = s.backend.run
        s.backend.run = lambda feeds: {**real(feeds), "anomaly_map": np.zeros((len(feeds["image"]), SIZE), np.float32)}
        with pytest.raises(BundleError, match=r"output 'anomaly_map' is float32 \(1, 64\); expected float32 1×64×64"):
            s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8))
        s.backend.run = lambda feeds: {k: v.astype(np.float64) for k, v in real(feeds).items()}
        with pytest.raises(BundleError, match=r"output 'anomaly_map' is float64"):
            s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8))


def test_write_manifest_refuses_to_write_an_invalid_manifest(bundle):
    from adrt.runtime.bundle import write_manifest

    before = (bundle / "manifest.json").read_bytes()
    files = sorted(p.name for p in bundle.iterdir())
    m = _manifest(bundle)
    m["threshold"] = float("nan")
    with pytest.raises(BundleError, match="threshold=nan"):
        write_manifest(bundle, m)
    assert (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == files     # no temporary left


# --- 4. threads are bounded ----------------------------------------------------------------------

@pytest.mark.parametrize("threads", [100000, 10000, -1, 0, 2.5, 2**31, True, "2"])
def test_thread_counts_outside_one_to_four_per_cpu_are_refused_at_once(bundle, threads):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"threads=.*: expected an integer"):
        _load(bundle, threads=threads)
    assert time.perf_counter() - t0 < 2                  # before: 100000 hung (> 25 s)


def test_the_largest_thread_count_is_accepted(bundle):
    from adrt.runtime.limits import max_threads

    with _load(bundle, threads=max_threads()) as s, _load(bundle, threads=np.int64(1)) as s1:
        assert s.backend.threads == max_threads() and s1.backend.threads == 1


# --- 5. zip bundles ------------------------------------------------------------------------------

def _zip(folder, target, **kw):
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, **kw) as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, f"bundle/{p.relative_to(folder)}")
    return target


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Temporary folders of this test land in one place, so leftovers can be counted."""
    import tempfile

    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _member_data_offset(z, name):
    with zipfile.ZipFile(z) as f:
        info = f.getinfo(name)
    raw = z.read_bytes()
    h = info.header_offset
    name_len, extra_len = int.from_bytes(raw[h + 26 : h + 28], "little"), int.from_bytes(raw[h + 28 : h + 30], "little")
    return h + 30 + name_len + extra_len


def test_a_crc_corrupt_zip_is_a_bundle_error_and_leaves_nothing(bundle, tmp_path, private_tmp):
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as f:
        for p in bundle.iterdir():
            f.write(p, p.name)
    data = bytearray(z.read_bytes())
    data[_member_data_offset(z, "model.onnx") + 1000] ^= 0xFF     # one byte of the stored model
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"corrupt or unreadable zip \(BadZipFile: Bad CRC-32"):
        _load(z)
    assert list(private_tmp.iterdir()) == []              # before: zlib.error and an adrt-bundle-* folder


def test_a_truncated_deflate_stream_is_a_bundle_error(bundle, tmp_path, private_tmp):
    z = _zip(bundle, tmp_path / "b.zip")
    data = bytearray(z.read_bytes())
    start = _member_data_offset(z, "bundle/model.onnx")
    data[start + 100 : start + 4000] = np.random.default_rng(0).integers(0, 256, 3900, dtype=np.uint8).tobytes()
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt or unreadable zip"):
        _load(z)
    assert list(private_tmp.iterdir()) == []


def test_a_session_dropped_without_close_removes_its_extracted_folder(bundle, tmp_path, private_tmp):
    s = _load(_zip(bundle, tmp_path / "b.zip"))
    root = s.bundle.root
    assert root.exists() and str(root).startswith(str(private_tmp))
    del s
    gc.collect()
    assert not root.exists() and list(private_tmp.iterdir()) == []


def test_a_zip_bomb_is_refused_before_extraction(tmp_path, private_tmp):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
        f.writestr("manifest.json", "{}")
        f.writestr("model.onnx", b"\0" * (64 << 20))          # 64 MiB of zeros: ~1000:1
    assert z.stat().st_size < 200_000
    with pytest.raises(BundleError, match=r"expands \d+ bytes to 67108864 \(more than 100:1\)"):
        _load(z)
    assert list(private_tmp.iterdir()) == []


def test_a_zip_bomb_of_many_small_members_is_refused_before_extraction(tmp_path, private_tmp):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
        f.writestr("manifest.json", "{}")
        for i in range(200):                                   # each below the per-member ratio check's 1 MiB
            f.writestr(f"m{i:03d}.bin", b"\0" * (512 << 10))
    assert z.stat().st_size < 300_000
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"its 201 members expand \d+ bytes to 104857602 \(more than 100:1\)"):
        _load(z)                                  # before: 100 MiB extracted, then "not an adrt bundle manifest"
    assert time.perf_counter() - t0 < 2 and list(private_tmp.iterdir()) == []


def test_zip_total_size_and_member_count_are_bounded(bundle, tmp_path, private_tmp, monkeypatch):
    from adrt.runtime import limits

    z = _zip(bundle, tmp_path / "b.zip")
    monkeypatch.setattr(limits, "MAX_ZIP_BYTES", 1 << 20)
    with pytest.raises(BundleError, match="more than 1048576 bytes uncompressed"):
        _load(z)
    monkeypatch.undo()
    monkeypatch.setattr(limits, "MAX_ZIP_MEMBERS", 1)
    with pytest.raises(BundleError, match="members; a bundle zip has at most 1"):
        _load(z)
    assert list(private_tmp.iterdir()) == []


def test_zip_members_that_are_links_or_escape_are_refused(tmp_path, private_tmp):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as f:
        info = zipfile.ZipInfo("bundle/model.onnx")
        info.external_attr = (0o120777 << 16)                  # a symlink member
        f.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="is a link or special file"):
        _load(z)
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("bundle/../../evil.txt", "x")
    with pytest.raises(BundleError, match="unsafe member name"):
        _load(z)
    assert list(private_tmp.iterdir()) == []


# --- 6. images -----------------------------------------------------------------------------------

def _png_header_only(path, width, height):
    """A valid 1-bit PNG of width×height whose rows are all zero: a few hundred KB on disk."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    from adrt.runtime.image import read_image

    p = _png_header_only(tmp_path / "huge.png", 13370, 13370)        # 179 MP: 2.17 GB RSS before
    assert p.stat().st_size < 1_000_000
    code = ("import sys\nfrom adrt.runtime.image import read_image\nfrom adrt.errors import DataError\n"
            f"try:\n    read_image({str(p)!r})\nexcept DataError as e:\n    print(e)\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    msg, rss_kib = out.stdout.strip().splitlines()
    assert "13370×13370 = 178.8 MP, more than the limit of 64 MP" in msg and "ADRT_MAX_PIXELS" in msg
    assert int(rss_kib) < 300_000                        # never decoded
    with pytest.raises(DataError, match="more than the limit of 0.0001 MP"):
        read_image(_png_header_only(tmp_path / "small.png", 20, 20), max_pixels=100)


def test_the_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch):
    from adrt.runtime.image import read_image

    p = _png_header_only(tmp_path / "a.png", 40, 30)
    monkeypatch.setenv("ADRT_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="40×30 = 0.0 MP, more than the limit"):
        read_image(p)
    assert read_image(p, max_pixels=1200).shape == (30, 40, 3)
    monkeypatch.setenv("ADRT_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match=r"\$ADRT_MAX_PIXELS='lots': expected a positive integer"):
        read_image(p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once_and_skipped_by_folder_scans(tmp_path, capsys):
    from adrt.runtime.image import read_image, scan_images

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "sub.png").mkdir()
    _png_header_only(tmp_path / "sub.png" / "inner.png", 8, 8)
    _png_header_only(tmp_path / "ok.png", 8, 8)
    with pytest.raises(DataError, match=r"pipe.png: is a FIFO \(named pipe\) \(expected an image file\)"):
        read_image(tmp_path / "pipe.png")
    notes = []
    assert scan_images(tmp_path, notice=notes.append) == [tmp_path / "ok.png"]
    assert sorted(notes) == [f"skipped {tmp_path / 'pipe.png'}: a FIFO (named pipe), not an image file",
                             f"skipped {tmp_path / 'sub.png'}: a folder, not an image file"]
    assert scan_images(tmp_path, recursive=True, notice=None) == [tmp_path / "ok.png",
                                                                    tmp_path / "sub.png" / "inner.png"]


# --- 8. API misuse -------------------------------------------------------------------------------

def test_run_after_close_is_a_closed_error(bundle):
    s = _load(bundle)
    s.close()
    s.close()                                              # idempotent
    with pytest.raises(ClosedError, match="this Session was closed"):
        s.run(np.zeros((1, SIZE, SIZE, 3), np.uint8))


def test_run_files_takes_one_path_and_checks_batch_size(bundle, synth_data):
    img = sorted((synth_data / "test" / "good").iterdir())[0]
    with _load(bundle) as s:
        one = s.run_files(str(img))                        # before: "/: is a folder"
        also = s.run_files(img)
        assert len(one) == 1 and np.array_equal(one.scores, s.run_files([img]).scores)
        assert np.array_equal(one.scores, also.scores)
        for bad in (0, -1, 2.5, None):
            with pytest.raises(InputError, match=r"batch_size=.*: expected an integer >= 1"):
                s.run_files([img], batch_size=bad)
        with pytest.raises(InputError, match="image path 3: expected a str or os.PathLike"):
            s.run_files([3])


@pytest.mark.parametrize("backend", [None, 3, "gpu"])
def test_a_bad_backend_value_is_a_backend_error(bundle, backend):
    with pytest.raises(BackendError, match="unknown backend"):
        _load(bundle, backend=backend)                     # None: KeyError before


@pytest.mark.parametrize("precision", [None, 16, "fp64"])
def test_a_bad_precision_value_is_an_adrt_error(bundle, precision):
    with pytest.raises(AdrtError, match="precision|no 'fp64' model"):
        _load(bundle, precision=precision)


def test_a_bad_path_value_is_an_adrt_error():
    import adrt.runtime as rt

    with pytest.raises(InputError, match="bundle path None: expected a str or os.PathLike"):
        rt.load(None)


def test_bundles_and_runs_get_the_umasks_permissions(runs):
    run, b = runs("padim")
    mask = os.umask(0)
    os.umask(mask)
    for folder in (run, b):
        assert (folder.stat().st_mode & 0o777) == (0o777 & ~mask), folder
        for f in folder.iterdir():
            assert (f.stat().st_mode & 0o777) == (0o666 & ~mask), f      # before: 0700 folders
