"""Uninformed Students (Bergmann et al., CVPR 2020): student–teacher anomaly detection with
discriminative latent embeddings; teachers distilled from EfficientNet-Lite, dense evaluation."""
from __future__ import annotations

from adrt.train.registry import register
from adrt.train.students.model import ARCHITECTURES, PatchNet, StudentsConfig, StudentsScorer
from adrt.train.students.training import fit_scorer

__all__ = ["Students", "StudentsConfig", "StudentsScorer", "PatchNet", "ARCHITECTURES", "single_scale"]


@register("students")
class Students:
    """Uninformed Students: per receptive field a distilled teacher and M regressing students; error + variance."""

    Config = StudentsConfig

    @staticmethod
    def build(cfg: StudentsConfig, pretrained: bool = False) -> StudentsScorer:
        # Everything (teachers included) is trained and saved in the run; nothing pretrained is needed here.
        return StudentsScorer(cfg)

    @staticmethod
    def fit(cfg: StudentsConfig, images, preprocess, seed: int = 0, log=print) -> StudentsScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)


def single_scale(run, p: int, out, data=None, log=lambda *a, **k: None, overwrite: bool = False):
    """Write run folder ``out``: receptive field ``p`` alone of the multi-scale students run ``run``
    (its teacher, students and statistics unchanged), recalibrated on the run's held-out images.

    Each scale's networks and statistics are independent of the others, so this equals training
    that scale alone with the same seed. ``data`` defaults to the dataset recorded in the run.
    """
    from dataclasses import replace

    import torch

    from adrt.errors import AdrtError
    from adrt.train.detector import Detector
    from adrt.train.fit import load_run, save_derived_run

    det, meta = load_run(run)
    if meta["method"] != "students":
        raise AdrtError(f"{run}: a {meta['method']!r} run, not a students run")
    src: StudentsScorer = det.scorer
    if p not in src.scales:
        raise AdrtError(f"{run}: receptive field {p} not in the run's scales {src.scales}")
    k = src.scales.index(p)
    cfg = replace(src.cfg, scales=(p,))
    scorer = StudentsScorer(cfg)
    scorer.teachers[0].load_state_dict(src.teachers[k].state_dict())
    scorer.students[0].load_state_dict(src.students[k].state_dict())
    with torch.no_grad():
        for name in ("t_mean", "t_std", "err_stats", "var_stats"):
            getattr(scorer, name)[0] = getattr(src, name)[k]
    new = Detector(scorer.eval(), det.spec, sigma=cfg.sigma, image_score=det.image_score).eval()
    return save_derived_run(new, cfg, meta, run, out, {"scales": [p]}, data, log, f"single_scale: p={p}",
                            overwrite=overwrite)
