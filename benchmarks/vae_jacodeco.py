"""Eager probe: the decoder-Jacobian-corrected likelihood ("JacoDeco") as a VAE image score.

Issue #4 asks for "the score Šmídl, Bím and Pevný define" (arXiv 1905.11890), read there as an MMD
score; the paper's text is not reachable here (only its abstract). The authors' group's own code
(aicenter/GenerativeAD.jl) cites that paper for its "JacoDeco" score: the density of x on the
decoder's manifold, −log p(x) ≈ −log p(x | z) − log p(z) + ½ log det(JᵀJ), J = ∂f/∂z at z = μ(x).
This script measures that score, and its parts, on a trained adrt VAE run, in torch eager (J by
forward-mode autodiff: one decoder pass per latent value, 512 at 128 px): is it worth a head in
the graph?

With the adrt VAE's loss (Σ squared error + β·KL), p(x | z) is Gaussian with variance ½, so
−log p(x | z) = ‖x − f(z)‖² + const and −log p(z) = ½‖z‖² + const.

    python benchmarks/vae_jacodeco.py runs/generative/vae_bottle ../shared/data/mvtec_ad/bottle --name bottle

Writes benchmarks/results/vae_jacodeco_NAME.{json,md}. Needs torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="A vae run folder (adrt train vae ...).")
    ap.add_argument("data", type=Path, help="Dataset with a test split (MVTec AD layout).")
    ap.add_argument("--name", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="Only N test images, spread over the split (first and "
                    "last included).")
    ap.add_argument("--out", type=Path, default=None, help="Output path without suffix.")
    args = ap.parse_args(argv)

    import torch

    from adrt.data import Dataset, load_images
    from adrt.metrics import evaluate
    from adrt.train.fit import load_run

    torch.set_num_threads(args.threads)
    det, meta = load_run(args.run)
    if meta.get("method") != "vae":
        raise SystemExit(f"{args.run}: a {meta.get('method')!r} run; this probe needs a vae run")
    det.eval()
    net = det.scorer.net
    test = Dataset.open(args.data).test
    if args.limit is not None and args.limit < len(test):
        test = [test[int(i)] for i in np.linspace(0, len(test) - 1, max(2, args.limit)).round()]
    images = load_images([s.path for s in test], det.spec.height, det.spec.width)
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    parts = {"recon": [], "half_z_sq": [], "log_det_jtj": []}
    t0 = time.perf_counter()
    for i in range(len(images)):
        with torch.no_grad():
            x = det.preprocess(torch.from_numpy(images[i : i + 1]))
            mu, _ = net.encode(x)
            f = net.decode(mu)
            jac = torch.func.jacfwd(net.decode)(mu).reshape(x.numel(), mu.numel())
            sv = torch.linalg.svdvals(jac)
        parts["recon"].append(float(((x - f) ** 2).sum()))
        parts["half_z_sq"].append(float(0.5 * (mu * mu).sum()))
        parts["log_det_jtj"].append(float(torch.log(sv * sv).sum()))
    seconds = time.perf_counter() - t0
    p = {k: np.array(v) for k, v in parts.items()}
    scores = {
        "‖x − f(μ)‖² (image sum)": p["recon"],
        "½‖μ‖²": p["half_z_sq"],
        "log det JᵀJ": p["log_det_jtj"],
        "−log p(x|μ) − log p(μ)": p["recon"] + p["half_z_sq"],
        "JacoDeco: −log p(x|μ) − log p(μ) + ½ log det JᵀJ": p["recon"] + p["half_z_sq"] + 0.5 * p["log_det_jtj"],
    }
    rows = [{"score": k, "image_auroc": evaluate(labels, v, types)["overall"]["image_auroc"]} for k, v in scores.items()]
    report = {"run": str(args.run), "data": str(args.data), "date": time.strftime("%Y-%m-%d %H:%M"),
              "torch": torch.__version__, "threads": args.threads, "test_images": len(images),
              "latent_values": int(mu.numel()), "seconds_per_image": seconds / len(images), "rows": rows,
              "parts_mean": {k: {"good": float(v[labels == 0].mean()), "defective": float(v[labels == 1].mean())}
                             for k, v in p.items()},
              "per_image": [{"path": str(t.path), "label": int(t.label), **{k: parts[k][i] for k in parts}}
                            for i, t in enumerate(test)]}
    out = args.out or HERE / "results" / f"vae_jacodeco_{args.name}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# VAE image scores incl. JacoDeco, torch eager: {args.name}", "",
             f"Regenerate: `python benchmarks/vae_jacodeco.py {args.run} {args.data} --name {args.name}`. "
             f"torch {torch.__version__}, {args.threads} threads, {report['date']}; {len(images)} test images, "
             f"{report['latent_values']} latent values, {report['seconds_per_image']:.2f} s per image for J "
             "(forward mode) and its singular values. See the script's docstring for what is measured and why.", "",
             "| image score | image AUROC |", "|---|---|"]
    lines += [f"| {r['score'].replace('|', chr(92) + '|')} | {r['image_auroc']:.4f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
