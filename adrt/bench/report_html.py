"""A benchmark report as one self-contained HTML page: inline SVG plots and the Markdown tables.

Plots: latency distribution per configuration (every timed run as a dot, box p25–p75, median,
whiskers min–p99, mean), where a batch-1 run's time goes, throughput, and image AUROC against
latency when the bundles' manifests hold eval results. No plotting library: numpy and strings.
"""
from __future__ import annotations

import html
import math
import re

import numpy as np

from adrt.bench.report_md import to_markdown

PALETTE = {"ort-cpu": "#1f77b4", "ort-cuda": "#2ca02c", "ort-trt": "#9467bd", "torch-eager": "#d62728",
           "torch-cuda": "#ff9896"}
STAGES = [("prep", "host prep (outside graph)", "#bcbd22"), ("host", "host call", "#7f7f7f"),
          ("ort_overhead", "ORT overhead", "#c7c7c7"), ("pre", "pre in graph", "#ff7f0e"),
          ("model", "model", "#1f77b4"), ("post", "post in graph", "#2ca02c"),
          ("run", "graph run (not split)", "#aec7e8")]
PLOT_W, ROW_H, PAD, CHAR_W = 560, 24, 34, 6.6

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.35em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
td:nth-child(-n+4),th:nth-child(-n+4){text-align:left}tr.bad td{background:#fde2e1}
svg{font-size:11px;font-family:inherit}p{font-size:.9em;line-height:1.4}code{background:#f4f4f4;padding:0 3px}
.note{color:#666;font-size:.85em}
"""


def _e(s) -> str:
    return html.escape(str(s))


def _color(backend: str) -> str:
    return PALETTE.get(backend, "#8c564b")


def _label(e: dict) -> str:
    t = e["threads"] if e["threads"] else "default"
    p = e.get("precision", "fp32")
    be = e["backend"] if p == "fp32" else f"{e['backend']} {p}"
    return f"{e['method']} · {be} · {t} thr · {e['bundle_name']}"


class Axis:
    """Maps values to pixels on [x0, x1]; logarithmic when the values span more than ``log_above``×."""

    def __init__(self, lo: float, hi: float, x0: float, x1: float, log_above: float = 30.0, zero: bool = False):
        lo, hi = float(lo), float(hi)
        self.log = lo > 0 and hi / lo > log_above and not zero
        if self.log:
            self.lo, self.hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        else:
            lo = 0.0 if zero else lo
            span = (hi - lo) or abs(hi) or 1.0
            step = _nice_step(span / 5)
            self.lo, self.hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
            if self.hi <= self.lo:
                self.hi = self.lo + step
        self.x0, self.x1 = x0, x1

    def __call__(self, v: float) -> float:
        if self.log:
            f = (math.log10(max(v, self.lo)) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.x0 + f * (self.x1 - self.x0)

    def ticks(self) -> list[float]:
        if self.log:
            out, d = [], self.lo
            while d <= self.hi * 1.0001:
                out += [d * m for m in ((1, 2, 5) if self.hi / self.lo <= 1e3 else (1,)) if d * m <= self.hi * 1.0001]
                d *= 10
            return out
        step = _nice_step((self.hi - self.lo) / 5)
        n = int(round((self.hi - self.lo) / step))
        return [self.lo + i * step for i in range(n + 1)]


def _nice_step(raw: float) -> float:
    raw = raw if raw > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def _x_axis(ax: Axis, y: float, top: float, title: str) -> list[str]:
    out = [f'<line x1="{ax.x0}" y1="{y}" x2="{ax.x1}" y2="{y}" stroke="#888"/>']
    for t in ax.ticks():
        x = ax(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle">{_fmt_tick(t)}</text>')
    out.append(f'<text x="{(ax.x0 + ax.x1) / 2:.0f}" y="{y + 30}" text-anchor="middle">{_e(title)}'
               f'{" (log scale)" if ax.log else ""}</text>')
    return out


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg style="display:block" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{_e(title)}">' + "".join(body) + "</svg>")


def _label_w(entries: list[dict]) -> float:
    return 16 + CHAR_W * max(len(_label(e)) for e in entries)


def latency_plot(entries: list[dict]) -> str:
    """Horizontal box plots of batch-1 latency with every timed run as a dot."""
    entries = [e for e in entries if e.get("samples_ms")]
    if not entries:
        return ""
    lw = _label_w(entries)
    allv = [v for e in entries for v in e["samples_ms"]]
    ax = Axis(min(allv), max(allv), lw, lw + PLOT_W)
    h = PAD + ROW_H * len(entries)
    body = _x_axis(ax, h - PAD + 10, 4, "batch-1 latency, ms")
    rng = np.random.default_rng(0)
    for i, e in enumerate(entries):
        y = 10 + ROW_H * i + ROW_H / 2
        c = _color(e["backend"])
        v = np.asarray(e["samples_ms"])
        p25, p50, p75, p99 = np.percentile(v, [25, 50, 75, 99])
        body.append(f'<text x="{lw - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(_label(e))}</text>')
        for val, j in zip(v, rng.uniform(-6, 6, len(v))):
            body.append(f'<circle cx="{ax(val):.1f}" cy="{y + j:.1f}" r="1.7" fill="{c}" fill-opacity=".35"/>')
        body.append(f'<line x1="{ax(v.min()):.1f}" y1="{y}" x2="{ax(p99):.1f}" y2="{y}" stroke="{c}"/>')
        body.append(f'<rect x="{ax(p25):.1f}" y="{y - 7}" width="{max(1.0, ax(p75) - ax(p25)):.1f}" height="14" '
                    f'fill="{c}" fill-opacity=".18" stroke="{c}"/>')
        body.append(f'<line x1="{ax(p50):.1f}" y1="{y - 8}" x2="{ax(p50):.1f}" y2="{y + 8}" stroke="{c}" '
                    f'stroke-width="2.5"/>')
        m = ax(float(v.mean()))
        body.append(f'<path d="M{m:.1f} {y - 5}l4 5l-4 5l-4 -5z" fill="#fff" stroke="#000"/>')
        body.append(f'<title>{_e(_label(e))}: mean {v.mean():.2f} ms, p50 {p50:.2f}, p99 {p99:.2f}</title>')
    return _svg(lw + PLOT_W + 20, h + 14, body, "latency distribution")


def breakdown_plot(entries: list[dict]) -> str:
    """100 % stacked bars: host prep outside the graph, then the graph run, split by ORT's profiler where measured."""
    rows = []
    for e in entries:
        parts = [("prep", e["prepare_ms"]["mean"])]
        g = e.get("graph_ms")
        if g:
            parts += [(k, g[k]) for k in ("host", "ort_overhead", "pre", "model", "post")]
        else:
            parts.append(("run", e["latency_ms"]["mean"]))
        rows.append((e, parts))
    if not rows:
        return ""
    lw = _label_w(entries)
    ax = Axis(0, 100, lw, lw + PLOT_W, zero=True)
    h = PAD + ROW_H * len(rows) + 22
    colors = {k: c for k, _, c in STAGES}
    names = {k: n for k, n, _ in STAGES}
    base = PAD + ROW_H * len(rows) - 24
    body = _x_axis(ax, base, 4, "share of host prep + batch-1 run, %")
    for i, (e, parts) in enumerate(rows):
        y = 10 + ROW_H * i
        total = sum(v for _, v in parts) or 1.0
        body.append(f'<text x="{lw - 8}" y="{y + ROW_H / 2 + 4:.1f}" text-anchor="end">{_e(_label(e))}</text>')
        x = 0.0
        for k, v in parts:
            pct = 100 * v / total
            body.append(f'<rect x="{ax(x):.1f}" y="{y + 4}" width="{max(0.0, ax(x + pct) - ax(x)):.1f}" '
                        f'height="{ROW_H - 8}" fill="{colors[k]}"><title>{_e(names[k])}: {v:.2f} ms '
                        f'({pct:.0f} %)</title></rect>')
            x += pct
        body.append(f'<text x="{ax(100) + 6:.1f}" y="{y + ROW_H / 2 + 4:.1f}">{total:.2f} ms</text>')
    lx = lw
    used = {k for _, parts in rows for k, _ in parts}
    for k, n, c in (st for st in STAGES if st[0] in used):
        body.append(f'<rect x="{lx}" y="{base + 38}" width="10" height="10" fill="{c}"/>'
                    f'<text x="{lx + 14}" y="{base + 47}">{_e(n)}</text>')
        lx += 26 + 7 * len(n)
    return _svg(max(lw + PLOT_W + 80, lx), h + 36, body, "time breakdown")


def throughput_plot(entries: list[dict]) -> str:
    if not entries:
        return ""
    lw = _label_w(entries)
    ax = Axis(0, max(e["throughput"]["images_per_s"] for e in entries), lw, lw + PLOT_W, zero=True)
    h = PAD + ROW_H * len(entries)
    body = _x_axis(ax, h - PAD + 10, 4, f"images/s at batch {entries[0]['throughput']['batch']}")
    for i, e in enumerate(entries):
        y = 10 + ROW_H * i
        v = e["throughput"]["images_per_s"]
        body.append(f'<text x="{lw - 8}" y="{y + ROW_H / 2 + 4:.1f}" text-anchor="end">{_e(_label(e))}</text>')
        body.append(f'<rect x="{lw}" y="{y + 4}" width="{ax(v) - lw:.1f}" height="{ROW_H - 8}" '
                    f'fill="{_color(e["backend"])}"><title>{v:.1f} images/s</title></rect>')
        body.append(f'<text x="{ax(v) + 4:.1f}" y="{y + ROW_H / 2 + 4:.1f}">{v:.1f}</text>')
    return _svg(lw + PLOT_W + 60, h + 14, body, "throughput")


def accuracy_plot(entries: list[dict]) -> str:
    """Image AUROC (from the bundles' manifests) against mean batch-1 latency.

    Accuracy belongs to a bundle, so each bundle and dataset is one row: a marker per configuration
    (coloured by backend) on a line from its fastest to its slowest, labelled once at the right.
    """
    groups: dict[tuple, list] = {}
    for e in entries:
        for d, a in (e.get("accuracy") or {}).items():
            if a is not None:
                groups.setdefault((e["bundle_name"], e["method"], d, a), []).append(e)
    if not groups:
        return ""
    w, h, left, top, bottom, label_w = 800, 380, 60, 16, 46, 220
    xs = [e["latency_ms"]["mean"] for g in groups.values() for e in g]
    ax = Axis(min(xs) * 0.9, max(xs) * 1.1, left, w - label_w, log_above=10)
    lo = min(k[3] for k in groups)
    ay = Axis(max(0.0, math.floor((lo - 0.02) * 20) / 20), 1.0, h - bottom, top)
    body = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#888"/>']
    for t in ay.ticks():
        y = ay(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - label_w}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:.2f}</text>')
    body.append(f'<text transform="translate(14 {(h - bottom + top) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                f'image AUROC</text>')
    body += _x_axis(ax, h - bottom, top, "mean batch-1 latency, ms")
    labels = []
    for (name, method, d, a), g in groups.items():
        y = ay(a)
        lat = sorted(e["latency_ms"]["mean"] for e in g)
        body.append(f'<line x1="{ax(lat[0]):.1f}" y1="{y:.1f}" x2="{ax(lat[-1]):.1f}" y2="{y:.1f}" stroke="#999"/>')
        for e in g:
            m = e["latency_ms"]["mean"]
            body.append(f'<circle cx="{ax(m):.1f}" cy="{y:.1f}" r="4.5" fill="{_color(e["backend"])}" '
                        f'fill-opacity=".85"><title>{_e(_label(e))}, {_e(d)}: AUROC {a:.3f}, {m:.2f} ms</title>'
                        '</circle>')
        labels.append((y, ax(lat[-1]), name, method, d, a))
    ambiguous = len({(m, d) for _, _, _, m, d, _ in labels}) < len(labels)
    # Rows with (nearly) equal AUROC would print over each other: push labels apart, with leader lines.
    prev = -math.inf
    for y, x_end, name, method, d, a in sorted(labels):
        ly = max(y, prev + 13)
        prev = ly
        text = f"{name} ({a:.3f})" if ambiguous else f"{method} · {d} ({a:.3f})"
        body.append(f'<line x1="{x_end + 6:.1f}" y1="{y:.1f}" x2="{w - label_w + 8}" y2="{ly:.1f}" stroke="#ccc"/>'
                    f'<text x="{w - label_w + 12}" y="{ly + 4:.1f}">{_e(text)}</text>')
    return _svg(w + 40, h, body, "accuracy vs latency")


def _legend(entries: list[dict]) -> str:
    seen = list(dict.fromkeys(e["backend"] for e in entries))
    return " ".join(f'<span style="color:{_color(b)}">■</span> {_e(b)}' for b in seen)


def markdown_to_html(md: str) -> str:
    """The subset of Markdown that :func:`adrt.bench.report_md.to_markdown` writes: headings, tables, lists, text."""
    out, table, items = [], [], []

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    def flush():
        if table:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table
                    if not re.fullmatch(r"\|[-| :]+\|", r.strip())]
            head, *rest = rows
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>")
            for r in rest:
                cls = ' class="bad"' if any("REGRESSION" in c for c in r) else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("- "):
            items.append(line[2:])
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def to_html(report: dict) -> str:
    """The whole report as an HTML page (plots first, then the tables of the Markdown report)."""
    ok = [e for e in report["results"] if e["status"] == "ok"]
    m = report["machine"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>adrt bench</title><style>{CSS}</style></head>"
             "<body>"]
    md = to_markdown(report)
    title, _, rest = md.partition("\n")
    parts.append(markdown_to_html(title))
    if ok:
        parts.append(f"<p class='note'>{_legend(ok)}</p>")
        parts.append("<h2>Batch-1 latency distribution</h2><p class='note'>Every timed run is a dot; box p25–p75, "
                     "thick line median, whiskers min–p99, diamond mean.</p>")
        parts.append(latency_plot(ok))
        parts.append("<h2>Where a batch-1 run goes</h2>")
        parts.append(breakdown_plot(ok))
        parts.append("<h2>Throughput</h2>")
        parts.append(throughput_plot(ok))
        acc = accuracy_plot(ok)
        if acc:
            parts.append("<h2>Accuracy vs latency</h2><p class='note'>Image AUROC as recorded in each bundle's "
                         "manifest (<code>adrt eval --record</code>).</p>")
            parts.append(acc)
    parts.append(markdown_to_html(rest))
    mach = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("ort_providers",) and v is not None)
    parts.append(f"<h2>Machine</h2><p class='note'>{_e(mach)}</p></body></html>")
    return "\n".join(parts)
