"""An `adrt bench` report as a file: its format, reading it back with validation, comparing two reports,
and writing the JSON/Markdown/HTML trio. Never imports the harness: a report can be read and rendered
without running anything."""
from __future__ import annotations

import json
from pathlib import Path


from adrt.bench.report_html import to_html
from adrt.bench.report_md import to_markdown
from adrt.errors import AdrtError
from adrt.outputs import write_bytes_atomic

FORMAT = "adrt-bench"
FORMAT_VERSION = 1


class BenchReportError(AdrtError):
    """A benchmark report file that cannot be read or is of another format."""


def load_report(path) -> dict:
    """Read and validate an adrt bench report (format ``adrt-bench``, version 1)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchReportError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchReportError(f"{path}: not a JSON file ({e}); expected an `adrt bench --out` report") from None
    if not isinstance(data, dict):
        raise BenchReportError(f"{path}: not an adrt bench report (a JSON {type(data).__name__}, expected an object "
                               f"with \"format\": \"{FORMAT}\")")
    fmt = data.get("format")
    if fmt is None and "results" in data:
        raise BenchReportError(f"{path}: a report from an adrt bench older than format version {FORMAT_VERSION} "
                               f"(no \"format\" key); re-run `adrt bench` to make one to compare with")
    if fmt != FORMAT:
        raise BenchReportError(f"{path}: not an adrt bench report (format {fmt!r}, expected {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise BenchReportError(f"{path}: adrt bench report format version {data.get('format_version')!r} (written "
                               f"by adrt {data.get('adrt_version', '?')}); this adrt reads version {FORMAT_VERSION}")
    if not isinstance(data.get("results"), list):
        raise BenchReportError(f"{path}: adrt bench report without a \"results\" list")
    return data


def compare(new: dict, old: dict, threshold: float = 0.10, against: str | None = None) -> dict:
    """Ratios new/old per configuration (matched by bundle name, backend, precision and threads).

    A row is a regression when the mean batch-1 latency is more than ``threshold`` slower or the
    throughput more than ``threshold`` lower.
    """
    olds = {}
    for e in old["results"]:
        if e.get("status", "ok") == "ok" and "latency_ms" in e and "key" in e:
            olds.setdefault(e["key"], e)
    rows, seen = [], set()
    for e in new["results"]:
        if e.get("status") != "ok":
            continue
        o = olds.get(e["key"])
        if o is None:
            continue
        seen.add(e["key"])
        lat, olat = e["latency_ms"], o["latency_ms"]
        tp = e["throughput"]["images_per_s"] / o["throughput"]["images_per_s"]
        row = {"key": e["key"], "method": e["method"], "backend": e["backend"], "precision": e.get("precision", "fp32"),
               "threads": e["threads"],
               "bundle_name": e["bundle_name"], "old_mean_ms": olat["mean"], "new_mean_ms": lat["mean"],
               "mean_ratio": lat["mean"] / olat["mean"], "p50_ratio": lat["p50"] / olat["p50"],
               "p99_ratio": lat["p99"] / olat["p99"], "throughput_ratio": tp}
        row["regression"] = bool(row["mean_ratio"] > 1 + threshold or tp < 1 / (1 + threshold))
        rows.append(row)
    new_keys = {e["key"] for e in new["results"] if e.get("status") == "ok"}
    om, nm = old.get("machine", {}), new.get("machine", {})
    return {"against": against, "against_created": old.get("created"), "threshold": threshold, "rows": rows,
            "regressions": sum(r["regression"] for r in rows),
            "new_only": sorted(new_keys - seen), "old_only": sorted(set(olds) - new_keys),
            "same_machine": (om.get("cpu"), om.get("cpus"), om.get("platform")) ==
                            (nm.get("cpu"), nm.get("cpus"), nm.get("platform")),
            "same_protocol": old.get("settings", {}).get("protocol") == new.get("settings", {}).get("protocol")}


def report_paths(out) -> list[Path]:
    """The files a report at ``out`` is written to: ``out`` with suffixes .json, .md and .html."""
    out = Path(out)
    return [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".html")]


def looks_like_report(path: Path) -> bool:
    """A file :func:`write_report` wrote: the JSON of format ``adrt-bench``, its Markdown or its HTML."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            if path.stat().st_size > 64 << 20:
                return False
            data = json.loads(path.read_text())
            return isinstance(data, dict) and data.get("format") == FORMAT
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if path.suffix == ".md":
        return head.startswith("# adrt bench:")
    return path.suffix == ".html" and head.startswith("<!doctype html>") and "<title>adrt bench</title>" in head


def write_report(report: dict, out) -> list[Path]:
    """Write ``out`` with suffixes .json, .md and .html (any suffix of ``out`` is replaced)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = report_paths(out)
    # Each file whole or not at all (a full disk leaves the previous report, not half of one).
    write_bytes_atomic(paths[0], json.dumps(report, indent=1))
    write_bytes_atomic(paths[1], to_markdown(report) + "\n")
    write_bytes_atomic(paths[2], to_html(report))
    return paths
