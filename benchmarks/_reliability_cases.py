"""The cases of benchmarks/reliability.py that run inside one Python process (the "worker"): bad
bundles, manifests, zips, thread counts, API misuse and images, through adrt's public API only
(``adrt.runtime.load``, ``Session``, ``read_image``), so the same worker runs against any adrt.

Run as ``python _reliability_cases.py WORK``: reads one JSON case per line on stdin, prints one
``@@RESULT {...}`` line per case on stdout. The driver kills and restarts it on a hang or a crash.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import stat
import struct
import sys
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np

SIZE = 64


# --- manifest and bundle cases --------------------------------------------------------------------

def _set(d, path, op, value):
    for k in path[:-1]:
        if not isinstance(d, dict) or k not in d:
            return                                   # an earlier mutation replaced the parent
        d = d[k]
    if not isinstance(d, dict):
        return
    if op == "delete":
        d.pop(path[-1], None)
    else:
        d[path[-1]] = value


def _png_bomb(path: Path, width: int, height: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _setup(b: Path, m: dict, what: str, scratch: Path) -> None:
    """Filesystem changes a manifest case needs besides the manifest itself."""
    if what == "flip_model":
        data = bytearray((b / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (b / "model.onnx").write_bytes(bytes(data))
    elif what == "symlink_out":
        shutil.move(b / "model.onnx", scratch / "elsewhere.onnx")
        os.symlink(scratch / "elsewhere.onnx", b / "model.onnx")
    elif what == "fifo_listed":
        os.mkfifo(b / "pipe.bin")
        m["files"]["pipe.bin"] = {"sha256": "0" * 64, "bytes": 0}
    elif what == "sparse_outside":
        with open(scratch / "big.bin", "wb") as f:
            f.truncate(4 << 30)
        m["files"]["../big.bin"] = {"sha256": "0" * 64, "bytes": 4 << 30}
    elif what in ("model_outside_rel", "model_outside_abs"):
        shutil.copy(b / "model.onnx", scratch / "outside.onnx")
        name = "../outside.onnx" if what.endswith("rel") else str(scratch / "outside.onnx")
        m["models"]["fp32"]["file"] = name
        if what.endswith("abs"):
            m["files"] = {}
    elif what == "wrong_height":
        m["input"]["height"] = m["input"]["width"] = 32


def case_manifest(c, ctx):
    b = ctx["scratch"] / "b"
    shutil.copytree(ctx["bundle"], b)
    m = json.loads((b / "manifest.json").read_text())
    for path, op, value in c.get("mutations", []):
        _set(m, path, op, value)
    if c.get("setup"):
        _setup(b, m, c["setup"], ctx["scratch"])
    (b / "manifest.json").write_text(json.dumps(m))
    return _load_and_compare(b, ctx)


def _load_and_compare(b, ctx, **kw):
    import adrt.runtime as rt

    s = rt.load(b, **kw)
    try:
        r = s.run(ctx["x"])
    finally:
        s.close()
    ref = ctx["ref"]
    # Within float noise: another thread count may sum in another order.
    same = bool(np.allclose(r.maps, ref.maps, rtol=1e-5, atol=1e-6) and np.allclose(r.scores, ref.scores, rtol=1e-5,
                atol=1e-6) and np.array_equal(r.labels, ref.labels))
    return {"correct": same}


def _zip_folder(folder: Path, target: Path, prefix: str = "bundle/", method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(target, "w", compression=method) as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, prefix + str(p.relative_to(folder)))
    return target


def case_zip(c, ctx):
    import adrt.runtime as rt

    z, kind = ctx["scratch"] / "b.zip", c["variant"]
    if kind in ("valid", "drop_without_close"):
        _zip_folder(ctx["bundle"], z)
    elif kind == "crc":
        _zip_folder(ctx["bundle"], z, "", zipfile.ZIP_STORED)
        with zipfile.ZipFile(z) as f:
            off = f.getinfo("model.onnx").header_offset + 100 + len("model.onnx")
        data = bytearray(z.read_bytes())
        data[off + 1000] ^= 0xFF
        z.write_bytes(bytes(data))
    elif kind == "truncated_deflate":
        _zip_folder(ctx["bundle"], z)
        with zipfile.ZipFile(z) as f:
            off = f.getinfo("bundle/model.onnx").header_offset + 100
        data = bytearray(z.read_bytes())
        data[off : off + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
        z.write_bytes(bytes(data))
    elif kind == "bomb":
        with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
            f.writestr("manifest.json", (ctx["bundle"] / "manifest.json").read_text())
            f.writestr("model.onnx", b"\0" * (256 << 20))
    elif kind in ("symlink_member", "traversal", "absolute"):
        with zipfile.ZipFile(z, "w") as f:
            if kind == "symlink_member":
                info = zipfile.ZipInfo("bundle/model.onnx")
                info.external_attr = 0o120777 << 16
                f.writestr(info, "/etc/passwd")
            else:
                f.writestr("../../evil.txt" if kind == "traversal" else "/tmp/evil.txt", "x")
    elif kind == "many_members":
        with zipfile.ZipFile(z, "w") as f:
            for i in range(5000):
                f.writestr(f"bundle/f{i}", "")
    elif kind == "not_zip":
        z.write_bytes(b"PK\x03\x04 not really")
    if kind == "drop_without_close":
        s = rt.load(z)
        s.run(ctx["x"][:1])
        del s
        gc.collect()
        return {"correct": True}
    return _load_and_compare(z, ctx)


def case_threads(c, ctx):
    return _load_and_compare(ctx["bundle"], ctx, threads=c["value"])


def case_session(c, ctx):
    import adrt.runtime as rt

    what, b = c["use"], ctx["bundle"]
    if what == "backend":
        return _load_and_compare(b, ctx, backend=c["value"])
    if what == "precision":
        return _load_and_compare(b, ctx, precision=c["value"])
    s = rt.load(b)
    try:
        if what == "run_after_close":
            s.close()
            s.run(ctx["x"])
            return {"correct": False}
        if what == "run_files_str":
            r = s.run_files(str(ctx["image"]))
            return {"correct": len(r.scores) == 1}
        if what == "batch_size":
            r = s.run_files([ctx["image"]], batch_size=c["value"])
            return {"correct": len(r.scores) == 1}
        if what == "array":
            s.run(_bad_array(c["value"]))
            return {"correct": False}
    finally:
        s.close()
    raise ValueError(what)


def _bad_array(kind):
    shapes = {"float32": ((1, SIZE, SIZE, 3), np.float32), "rgba": ((1, SIZE, SIZE, 4), np.uint8),
              "taller": ((1, SIZE + 1, SIZE, 3), np.uint8), "empty": ((0, SIZE, SIZE, 3), np.uint8),
              "2d": ((SIZE, SIZE), np.uint8), "5d": ((1, 1, SIZE, SIZE, 3), np.uint8),
              "int16": ((1, SIZE, SIZE, 3), np.int16), "nchw": ((1, 3, SIZE, SIZE), np.uint8)}
    if kind == "list":
        return [[1, 2]]
    if kind == "none":
        return None
    shape, dtype = shapes[kind]
    return np.zeros(shape, dtype)


# --- images ---------------------------------------------------------------------------------------

def _image_file(c, folder: Path) -> tuple[Path, np.ndarray | None]:
    """The case's file and, for files of known content, the array read_image must return."""
    from PIL import Image

    rng = np.random.default_rng(c.get("seed", 0))
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    kind, p = c["kind"], folder / c.get("name", "x.png")
    if kind == "random_bytes":
        p.write_bytes(rng.integers(0, 256, int(c["n"]), dtype=np.uint8).tobytes())
        return p, None
    if kind in ("truncated", "flipped"):
        Image.fromarray(rgb).save(p, format=c["format"])
        data = bytearray(p.read_bytes())
        if kind == "truncated":
            data = data[: int(len(data) * c["fraction"])]
        else:
            for i in rng.integers(0, len(data), int(c["n"])):
                data[i] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(data))
        return p, None
    if kind == "huge_header":
        _png_bomb(p, c["w"], c["h"])
        return p, None
    if kind == "fifo":
        os.mkfifo(p)
        return p, None
    if kind == "folder":
        p.mkdir()
        return p, None
    if kind == "empty":
        p.write_bytes(b"")
        return p, None
    modes = {"L": (gray, np.repeat(gray[:, :, None], 3, 2)),
             "I;16": ((gray.astype(np.uint16) * 257), np.repeat(gray[:, :, None], 3, 2)),
             "RGBA": (np.dstack([rgb, gray]), rgb), "RGB": (rgb, rgb),
             "1": (gray > 128, np.repeat(((gray > 128) * 255).astype(np.uint8)[:, :, None], 3, 2)),
             "F": (gray.astype(np.float32), None), "I32": (gray.astype(np.int32) * 100000, None)}
    arr, expect = modes[kind]
    img = Image.fromarray(arr)
    if kind == "1":
        img = img.convert("1")
    img.save(p, format=c.get("format", "PNG"))
    return p, expect


def case_image(c, ctx):
    from adrt.runtime.image import read_image

    p, expect = _image_file(c, ctx["scratch"])
    a = read_image(p)
    ok = isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    if expect is not None:
        ok = ok and np.array_equal(a, expect)
    return {"correct": bool(ok)}


CASES = {"manifest": case_manifest, "zip": case_zip, "threads": case_threads, "session": case_session,
         "image": case_image}


# --- the worker loop ------------------------------------------------------------------------------

def _context(work: Path) -> dict:
    import adrt.runtime as rt

    bundle = work / "bundle"
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with rt.load(bundle) as s:
        ref = s.run(x)
    image = work / "image.png"
    from PIL import Image

    Image.fromarray(x[0]).save(image)
    return {"bundle": bundle, "x": x, "ref": ref, "image": image}


def _is_adrt(e: BaseException) -> bool:
    return any(t.__module__ == "adrt.errors" for t in type(e).__mro__)


def main(work: str) -> None:
    work = Path(work)
    ctx = _context(work)
    out = sys.stdout
    sys.stdout = sys.stderr                          # only results on the protocol stream
    print("@@READY", file=out, flush=True)
    for line in sys.stdin:
        c = json.loads(line)
        ctx["scratch"] = work / "scratch" / c["id"]
        ctx["scratch"].mkdir(parents=True)
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        before = set(os.listdir(tmp))
        res = {"id": c["id"]}
        try:
            res.update(outcome="ok", **CASES[c["op"]](c, ctx))
        except Exception as e:  # the point of the exercise: what a user would see
            msg = str(e)
            res.update(outcome="error", error_type=type(e).__name__, adrt=_is_adrt(e), message=msg[:300],
                       one_line=bool(msg) and "\n" not in msg,
                       where=traceback.extract_tb(e.__traceback__)[-1].filename.split("site-packages/")[-1])
        gc.collect()
        # adrt's temporary folders (onnxruntime itself writes $TMPDIR/.ses)
        res["leaked"] = sorted(n for n in set(os.listdir(tmp)) - before if n.startswith("adrt-"))
        _remove(ctx["scratch"])
        print("@@RESULT " + json.dumps(res), file=out, flush=True)


def _remove(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_symlink() or stat.S_ISFIFO(p.lstat().st_mode):
            p.unlink()
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
