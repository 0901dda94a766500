"""An `adrt bench` report as Markdown tables (latency, efficiency, in-graph split, GEMM reference, skips,
comparison with an earlier report)."""
from __future__ import annotations



from adrt.bench.machine import FAULTS_NOTE, GEMM_DRIFT_WARN, TUNED_MALLOC
from adrt.bench.plan import GRAPH_SPLIT_RULE


def _f(v, fmt: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _be(e: dict) -> str:
    """Backend as shown in tables: with the precision when it is not fp32."""
    p = e.get("precision", "fp32")
    return e["backend"] if p == "fp32" else f"{e['backend']} · {p}"


def _threads(t) -> str:
    return str(t) if t else "default"


def to_markdown(report: dict) -> str:
    """The report as Markdown tables: latency, efficiency, in-graph split, GEMM reference, skips, comparison."""
    m, s = report["machine"], report["settings"]
    ok = [e for e in report["results"] if e["status"] == "ok"]
    fh, fw = s["frame"]
    lines = [f"# adrt bench: {m.get('cpu', m.get('machine'))}, {m['cpus']} CPUs, ONNX Runtime {m['onnxruntime']} "
             f"({report.get('created', '')})", "",
             f"Batch 1, host uint8 image in → anomaly map and score on the host; {s['warmup']} warm-up runs, then "
             f"{s['runs']} timed runs per configuration in {s['rounds']} interleaved rounds. Host prep = "
             f"`Session.prepare` of a {fh}×{fw} frame (outside the graph; cast, normalisation, upsampling, blur and "
             f"calibration are inside it). Throughput at batch {s['batch']}, timed after all batch-1 runs (a "
             f"larger batch changes what batch 1 costs afterwards). Peak RSS per configuration (each in its own "
             f"process) after the batch-1 runs; page faults: minor faults per timed batch-1 run.", ""]
    if m.get("loadavg") and m.get("loadavg_end"):
        l0, l1 = m["loadavg"][0], m["loadavg_end"][0]
        busy = " — above the CPU count: other work shared the machine" if max(l0, l1) > (m["cpus"] or 1) else ""
        lines += [f"Load average (1 min): {l0:.1f} at the start, {l1:.1f} at the end, on {m['cpus']} CPUs{busy}.", ""]
    lines += ["| method | backend | threads | bundle | size | mean ms | p50 | p90 | p99 | min | std | host prep ms "
              "| img/s (batch) | peak RSS MiB | page faults | vs torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in ok:
        lat, size = e["latency_ms"], e.get("size") or ["?", "?"]
        lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                     f"{size[0]}×{size[1]} | {lat['mean']:.2f} | {lat['p50']:.2f} | {lat['p90']:.2f} | "
                     f"{lat['p99']:.2f} | {lat['min']:.2f} | {lat['std']:.2f} | {e['prepare_ms']['mean']:.2f} | "
                     f"{e['throughput']['images_per_s']:.1f} ({e['throughput']['batch']}) | "
                     f"{_f(e.get('peak_rss_mb'))} | {_f((e.get('page_faults_per_run') or {}).get('lat'), '.0f')} | "
                     f"{_f(e.get('speedup_vs_torch'), '.2f')}"
                     f"{'×' if e.get('speedup_vs_torch') else ''} |")
    if s.get("worker_env"):
        lines += ["", "Environment of every configuration's process: "
                  + ", ".join(f"`{k}={v}`" for k, v in s["worker_env"].items()) + "."]
    faulty = [e for e in ok if e["backend"] == "torch-eager"
              and ((e.get("page_faults_per_run") or {}).get("lat") or 0) >= FAULTS_NOTE]
    if faulty:
        worst = max(e["page_faults_per_run"]["lat"] for e in faulty)
        lines += ["", f"Torch eager paid up to {worst:.0f} minor page faults per batch-1 run: glibc's malloc hands its "
                  "large temporaries back to the OS after each forward, as in any batch-1 torch loop with glibc's "
                  "defaults. Its best case on glibc, for comparison: the same bench with "
                  f"`{' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}` in the environment (ONNX Runtime "
                  "is not affected)."]
    if ok:
        lines += ["", "## Model and efficiency", "",
                  "| method | backend | threads | bundle | GFLOPs/img | params M | achieved GFLOP/s | % of GEMM "
                  "| GPU MiB | image AUROC |", "|---|---|---|---|---|---|---|---|---|---|"]
        infos = {b["path"]: b for b in report.get("bundles", [])}
        for e in ok:
            fl = (infos.get(e["bundle"], {}).get("flops") or {})
            params = fl.get("params")
            frac = e.get("gemm_fraction")
            auroc = ", ".join(f"{d} {v:.3f}" for d, v in (e.get("accuracy") or {}).items() if v is not None) or "-"
            gpu = "-"
            if e.get("gpu_mem_mb") is not None:
                gpu = f"{e['gpu_mem_mb']:.0f}"
            elif e.get("torch_cuda_peak_mb") is not None:
                gpu = f"{e['torch_cuda_peak_mb']:.0f} (torch allocator)"
            lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                         f"{_f(e.get('gflops_per_image'), '.2f')} | {_f(params / 1e6 if params else None, '.2f')} | "
                         f"{_f(e.get('achieved_gflops'))} | {_f(frac * 100 if frac else None, '.0f')} | {gpu} | "
                         f"{auroc} |")
        reasons = {(b.get("flops") or {}).get("reason") for b in report.get("bundles", [])} - {None}
        for r in sorted(reasons):
            lines.append(f"\nFLOPs not counted: {r}")
    split = [e for e in ok if e.get("graph_ms")]
    if split:
        lines += ["", "## Where a batch-1 run goes (ms, ONNX Runtime CPU node profiler)", "",
                  "| method | backend | threads | bundle | host prep (outside) | host call | ORT overhead | "
                  "pre in graph | model | post in graph |", "|---|---|---|---|---|---|---|---|---|---|"]
        for e in split:
            g = e["graph_ms"]
            lines.append(f"| {e['method']} | {_be(e)} | {_threads(e['threads'])} | {e['bundle_name']} | "
                         f"{e['prepare_ms']['mean']:.2f} | {g['host']:.2f} | {g['ort_overhead']:.2f} | "
                         f"{g['pre']:.2f} | "
                         f"{g['model']:.2f} | {g['post']:.2f} |")
        lines += ["", f"Split rule: {GRAPH_SPLIT_RULE}."]
    if report.get("gemm"):
        parts = [f"threads {k}: {_f(v.get('gflops'))} GFLOP/s"
                 for k, v in report["gemm"].items()]
        lines += ["", f"GEMM reference (numpy float32 1024×1024 with {m.get('blas') or 'its BLAS'}, best of the "
                  f"repeats before and after the rounds): "
                  + "; ".join(parts) + "."]
        for k, v in report["gemm"].items():
            d = v.get("drift")
            if d is not None and abs(d) > GEMM_DRIFT_WARN:
                lines += ["", f"**The machine's speed drifted during this run**: the GEMM at {k} thread(s) ran at "
                          f"{_f(v.get('gflops_start'))} GFLOP/s before the rounds and {_f(v.get('gflops_end'))} after "
                          f"({d:+.0%}). Compare the ratios measured within this run, not its absolute times with "
                          f"another run's."]
    bad = [e for e in report["results"] if e["status"] != "ok"]
    if bad:
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- {e['name']} ({e['bundle_name']}, threads {_threads(e['threads'])}): {e['status']}: {e['reason']}"
                  for e in bad]
    if report.get("compare"):
        lines += ["", compare_markdown(report["compare"])]
    return "\n".join(lines)


def compare_markdown(cmp: dict) -> str:
    thr = cmp["threshold"] * 100
    lines = [f"## Compared with {cmp.get('against') or 'an earlier run'} ({cmp.get('against_created') or '?'})", "",
             f"Ratios new/old; a regression is a mean latency more than {thr:.0f} % slower or a throughput more than "
             f"{thr:.0f} % lower.", ""]
    if not cmp.get("same_machine", True):
        lines += ["**The earlier report is from another machine or platform.**", ""]
    if not cmp.get("same_protocol", True):
        lines += ["**The earlier report was timed under another protocol** (see `settings.protocol` in each): "
                  "its figures are not like for like.", ""]
    lines += ["| method | backend | threads | bundle | old mean ms | new mean ms | mean | p50 | p99 | throughput | |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        lines.append(f"| {r['method']} | {_be(r)} | {_threads(r['threads'])} | {r['bundle_name']} | "
                     f"{r['old_mean_ms']:.2f} | {r['new_mean_ms']:.2f} | {r['mean_ratio']:.2f}× | "
                     f"{r['p50_ratio']:.2f}× | {r['p99_ratio']:.2f}× | {r['throughput_ratio']:.2f}× | "
                     f"{'**REGRESSION**' if r['regression'] else 'ok'} |")
    if cmp["new_only"]:
        lines.append(f"\nOnly in this run: {', '.join(cmp['new_only'])}")
    if cmp["old_only"]:
        lines.append(f"\nOnly in the earlier run: {', '.join(cmp['old_only'])}")
    lines.append(f"\n{cmp['regressions']} regression(s).")
    return "\n".join(lines)
