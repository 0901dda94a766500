"""The CLI cases of benchmarks/reliability.py: each runs `python -m adrt.cli ...` in its own process
(with the interpreter under test), in a folder of its own, and is checked for its exit status, a
traceback on stderr, files that were there before (data lost) and outputs left half-made."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SETS = [("patchcore", "coreset_ratio=nan"), ("patchcore", "num_neighbors=0"), ("patchcore", "num_neighbors=-3"),
        ("patchcore", "bank_chunk=0"), ("patchcore", "grid_stride=0"), ("patchcore", "coreset_ratio=-1"),
        ("patchcore", "embed_dim=100000"), ("patchcore", "patch_size=0"), ("patchcore", "sigma=-1"),
        ("patchcore", "coreset_ratio=2"), ("padim", "n_features=1000"), ("padim", "eps=nan"), ("padim", "foo=1"),
        ("padim", "n_features=2.5")]


def cli_cases(work: Path) -> list[dict]:
    d, r, b = str(work / "data"), str(work / "run"), str(work / "bundle")
    good = str(work / "data" / "test" / "good")
    t = ["--size", "64"]
    c = [
        # outputs: nothing lost
        dict(id="train-out-foreign", setup="foreign:F", argv=["train", "padim", "--data", d, "--out", "{C}/F", *t],
             protect=["F"]),
        dict(id="train-out-is-data", setup="data:D", argv=["train", "padim", "--data", "{C}/D", "--out", "{C}/D", *t],
             protect=["D"]),
        dict(id="train-out-holds-data", setup="data:P/data",
             argv=["train", "padim", "--data", "{C}/P/data", "--out", "{C}/P", *t], protect=["P"]),
        dict(id="export-out-is-run", setup="run:R", argv=["export", "{C}/R", "--out", "{C}/R"], protect=["R"]),
        dict(id="train-out-equals-export", argv=["train", "padim", "--data", d, "--out", "{C}/X", "--export", "{C}/X", *t],
             must_not_exist=["X"]),
        dict(id="export-out-foreign", setup="foreign:F", argv=["export", r, "--out", "{C}/F"], protect=["F"]),
        dict(id="eval-out-foreign", setup="foreign:F", argv=["eval", b, "--data", d, "--out", "{C}/F"], protect=["F"],
             unchanged=["F"]),
        dict(id="infer-overlays-foreign", setup="foreign:F", argv=["infer", b, good, "--overlays", "{C}/F"],
             protect=["F"], unchanged=["F"]),
        dict(id="infer-out-foreign-csv", setup="file:F/data.csv", argv=["infer", b, good, "--out", "{C}/F/data.csv"],
             protect=["F"]),
        dict(id="infer-out-is-input-image", setup="image:I/a.png", argv=["infer", b, "{C}/I/a.png", "--out", "{C}/I/a.png"],
             protect=["I"]),
        dict(id="synth-foreign", setup="foreign:F", argv=["synth", "{C}/F", "--train", "2"], protect=["F"], unchanged=["F"]),
        dict(id="demo-foreign", setup="foreign:F", argv=["demo", "--out", "{C}/F", "--size", "32", "--method", "padim"],
             protect=["F"], unchanged=["F"], timeout=600),
        dict(id="demo-unknown-method", argv=["demo", "--out", "{C}/N", "--method", "foo"], must_not_exist=["N"]),
        dict(id="demo-twice", pre=["demo", "--out", "{C}/M", "--size", "32", "--method", "padim"],
             argv=["demo", "--out", "{C}/M", "--size", "32", "--method", "padim"], expect="ok", timeout=600),
        # resources, inputs
        dict(id="infer-threads-100000", argv=["infer", b, good, "--threads", "100000"]),
        dict(id="infer-threads-minus-1", argv=["infer", b, good, "--threads", "-1"]),
        dict(id="infer-fifo-in-folder", setup="fifo:Q", argv=["infer", b, "{C}/Q"], expect="ok"),
        dict(id="infer-folder-named-png", setup="pngdir:Q", argv=["infer", b, "{C}/Q"], expect="ok"),
        dict(id="infer-out-missing-folder", argv=["infer", b, good, "--out", "{C}/new/deeper/s.csv"], expect="ok"),
        dict(id="infer-missing-bundle", argv=["infer", "{C}/nope", good]),
        dict(id="eval-vanished-masks", setup="pixelmasks:V", argv=["eval", b, "--data", "{C}/V"], expect="ok"),
        dict(id="info-files-as-list", setup="badmanifest:B:files", argv=["info", "{C}/B"]),
        dict(id="infer-threshold-abc", setup="badmanifest:B:threshold", argv=["infer", "{C}/B", good]),
        # full disk, Ctrl-C
        dict(id="export-disk-full", rlimit=100_000, argv=["export", r, "--out", "{C}/E"], clean=True),
        dict(id="eval-record-disk-full", setup="bundle:B", rlimit="manifest", argv=["eval", "{C}/B", "--data", d,
                                                                                   "--record"],
             protect=["B"], clean=True),
        dict(id="export-sigint", sigint=True, argv=["export", r, "--out", "{C}/S"], clean=True, expect="either"),
    ]
    c += [dict(id=f"set-{m}-{kv}", argv=["train", m, "--data", d, "--out", "{C}/R", *t, "--set", kv]) for m, kv in SETS]
    for case in c:
        case.setdefault("expect", "error")
        case.setdefault("family", "CLI outputs" if case.get("protect") or case.get("must_not_exist") or
                        case.get("clean") or case["id"].startswith("demo") else "CLI")
        case["what"] = "adrt " + " ".join(Path(a).name if "/" in a else a for a in case["argv"])
    return c


def _setup(spec: str, folder: Path, work: Path) -> None:
    kind, _, rest = spec.partition(":")
    target = folder / rest.split(":")[0]
    if kind == "foreign":
        target.mkdir(parents=True)
        (target / "thesis.tex").write_text("years of work")
    elif kind == "data":
        shutil.copytree(work / "data", target)
    elif kind == "run":
        shutil.copytree(work / "run", target)
    elif kind == "bundle":
        shutil.copytree(work / "bundle", target)
    elif kind == "file":
        target.parent.mkdir(parents=True)
        target.write_text("a,b\n1,2\n")
    elif kind == "image":
        target.parent.mkdir(parents=True)
        shutil.copy(sorted((work / "data" / "test" / "good").iterdir())[0], target)
    elif kind in ("fifo", "pngdir"):
        target.mkdir(parents=True)
        shutil.copy(sorted((work / "data" / "test" / "good").iterdir())[0], target / "a.png")
        if kind == "fifo":
            os.mkfifo(target / "pipe.png")
        else:
            (target / "sub.png").mkdir()
            shutil.copy(target / "a.png", target / "sub.png" / "b.png")
    elif kind == "pixelmasks":
        _pixel_mask_dataset(target)
    elif kind == "badmanifest":
        shutil.copytree(work / "bundle", target)
        m = json.loads((target / "manifest.json").read_text())
        if rest.endswith("files"):
            m["files"] = ["model.onnx"]
        else:
            m["threshold"] = "abc"
        (target / "manifest.json").write_text(json.dumps(m))


def _pixel_mask_dataset(root: Path) -> None:
    """A 128-px dataset whose 'spot' masks are one even pixel: gone at the bundle's 64 px."""
    import numpy as np
    from PIL import Image

    from adrt.synth import make_dataset

    make_dataset(root, size=128, n_train=2, n_test_good=3, n_test_defect=6)
    for m in (root / "ground_truth" / "spot").iterdir():
        mask = np.zeros((128, 128), np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(m)


def _snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in folder.rglob("*") if not p.is_fifo()}


def _command(python: str, argv: list[str], rlimit) -> list[str]:
    if rlimit is None:
        return [python, "-m", "adrt.cli", *argv]
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({rlimit}, {rlimit}))\n"
            f"sys.argv = ['adrt'] + {argv!r}\nfrom adrt.cli import main\nmain()\n")
    return [python, "-c", code]


def run_cli_case(case: dict, python: str, base: Path, env: dict) -> dict:
    folder = base / case["id"]
    folder.mkdir(parents=True)
    work = base.parent
    if case.get("setup"):
        _setup(case["setup"], folder, work)
    argv = [a.replace("{C}", str(folder)) for a in case["argv"]]
    if case.get("pre"):
        subprocess.run([python, "-m", "adrt.cli", *[a.replace("{C}", str(folder)) for a in case["pre"]]], env=env,
                       cwd=work, capture_output=True, timeout=case.get("timeout", 300))
    before = {p: _snapshot(folder / p) for p in case.get("protect", [])}
    entries_before = sorted(x.name for x in folder.iterdir())
    rlimit = case.get("rlimit")
    if rlimit == "manifest":
        rlimit = (folder / "B" / "manifest.json").stat().st_size + 100
    res = {"id": case["id"], "family": case["family"], "what": case["what"], "expect": case["expect"], "flags": []}
    p = subprocess.Popen(_command(python, argv, rlimit), env=env, cwd=work, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    if case.get("sigint"):
        _interrupt_when_staging(p, folder)
    try:
        _, err = p.communicate(timeout=case.get("timeout", 120))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        res.update(outcome="hang", category="hang")
        return res
    rc = p.returncode
    res.update(returncode=rc, message=(err.strip().splitlines() or [""])[-1][:300])
    if rc < 0:
        res.update(outcome="crash", category="crash")
    elif "Traceback" in err:
        res.update(outcome="error", error_type="traceback", category="unclear error")
    elif rc == 0:
        res.update(outcome="ok", category="correct" if case["expect"] in ("ok", "either") else "silently wrong")
    else:
        res.update(outcome="error", adrt=True, category="refused valid input" if case["expect"] == "ok" else "correct")
    for name, snap in before.items():
        after = _snapshot(folder / name)
        if any(after.get(k) != v for k, v in snap.items()):
            res["flags"].append("data lost")
            break
    if res["category"] == "correct" and any(_snapshot(folder / n) != before.get(n) for n in case.get("unchanged", [])):
        res["category"] = "silently wrong"             # accepted: wrote into a folder that was not its own
    partial = any((folder / n).exists() for n in case.get("must_not_exist", []))
    if case.get("clean"):
        partial = partial or sorted(x.name for x in folder.iterdir()) != entries_before or \
            any(".tmp" in x.name for x in folder.rglob("*"))
    if partial:
        res["flags"].append("partial output")
    return res


def _interrupt_when_staging(p: subprocess.Popen, folder: Path) -> None:
    """Ctrl-C once the export has started writing (a hidden staging folder appears), as a user would."""
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if any(x.name.startswith(".S") for x in folder.iterdir()):
            time.sleep(0.5)
            break
        time.sleep(0.05)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)
