"""Continue training the students of an Uninformed Students run; evaluate in torch after each round.

Tells whether the student budget limits the maps: the teachers, their statistics and the
validation split are the run's; only the students learn on (Adam restarted at the run's
``student_lr``; ×``--final-lr`` over the last 20 % of the last round). Prints one line per round;
the bottle figures are a row of ``results/students.md`` ("Measured while choosing the CPU defaults").

    python benchmarks/students_continue.py runs/students/students_bottle ../shared/data/mvtec_ad/bottle --steps 800 --rounds 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--steps", type=int, default=800, help="student steps per receptive field and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--final-lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from adrt.data import Dataset, load_images, load_masks, split_holdout
    from adrt.metrics import evaluate
    from adrt.train.fit import load_run
    from adrt.train.trainer import split_validation, to_tensor
    from adrt.train.students.fit import MIN_TRAIN, student_loss, validation_stats

    torch.set_num_threads(args.threads)
    det, meta = load_run(args.run)
    sc, cfg, seed = det.scorer, det.scorer.cfg, meta["training"]["seed"]
    size = det.spec.height
    ds = Dataset.open(args.data)
    fit_paths, _ = split_holdout(ds.train, 0.1, 4, seed)           # train()'s defaults
    if len(fit_paths) != meta["training"]["n_fit"]:
        raise SystemExit(f"{args.run}: trained on {meta['training']['n_fit']} images, but train()'s default holdout "
                         f"of {args.data} leaves {len(fit_paths)}: not that run's data or holdout")
    x_all = to_tensor(load_images(fit_paths, size, size), det.preprocess, cfg.dense_size)
    tr, va = split_validation(len(x_all), cfg.val_fraction, cfg.min_val, MIN_TRAIN, seed, "students")
    x_tr, x_va = x_all[tr], x_all[va]
    test = load_images([s.path for s in ds.test], size, size)
    masks, labels = load_masks(ds.test, size, size), np.array([s.label for s in ds.test])
    types = [s.defect_type for s in ds.test]

    def report(tag: str) -> None:
        sc.eval()
        err, var = validation_stats(sc, x_va)
        sc.err_stats.copy_(err)
        sc.var_stats.copy_(var)
        with torch.inference_mode():
            maps = torch.cat([det.raw(torch.from_numpy(test[i : i + 8]))[0] for i in range(0, len(test), 8)]).numpy()
        o = evaluate(labels, maps.reshape(len(maps), -1).max(1), types, masks=masks, maps=maps)["overall"]
        print(f"{tag}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o['pixel_auroc']:.3f}, AUPRO {o['aupro']:.3f}",
              flush=True)

    report("as trained")
    g = torch.Generator().manual_seed(args.seed)
    for r in range(args.rounds):
        t0 = time.perf_counter()
        for k, p in enumerate(cfg.scales):
            students = sc.students[k].train()
            sc.teachers.eval()
            opt = torch.optim.Adam(students.parameters(), lr=cfg.student_lr, weight_decay=cfg.weight_decay)
            losses = []
            for i in range(args.steps):
                if r == args.rounds - 1 and i >= 0.8 * args.steps:
                    for group in opt.param_groups:
                        group["lr"] = cfg.student_lr * args.final_lr
                loss, _ = student_loss(sc, k, x_tr[torch.randint(len(x_tr), (cfg.student_batch,), generator=g)])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            print(f"  round {r + 1}, p={p}: students loss {np.mean(losses[:50]):.4f} -> {np.mean(losses[-50:]):.4f}",
                  flush=True)
        report(f"+{(r + 1) * args.steps} student steps per p ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
