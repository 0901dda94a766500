"""Uninformed Students (Bergmann et al., CVPR 2020): student–teacher anomaly detection with
discriminative latent embeddings; teachers distilled from EfficientNet-Lite, dense evaluation."""
from __future__ import annotations

import torch

from adrt.errors import AdrtError
from adrt.train.derive import derive
from adrt.train.fit import load_run
from adrt.train.registry import MethodBase
from adrt.train.students.fit import fit_scorer
from adrt.train.students.model import ARCHITECTURES, PatchNet, StudentsConfig, StudentsScorer

__all__ = ["Students", "StudentsConfig", "StudentsScorer", "PatchNet", "ARCHITECTURES", "single_scale"]


class Students(MethodBase):
    """Uninformed Students: per receptive field a distilled teacher and M regressing students; error + variance."""

    Config = StudentsConfig
    # Each scale's networks and statistics are independent of the others: a subset of the scales is a
    # test-time choice (adrt.train.derive), equal to training those scales alone with the same seed.
    TEST_TIME_OPTIONS = ("scales", "sigma")

    @staticmethod
    def build(cfg: StudentsConfig, pretrained: bool = False) -> StudentsScorer:
        # Everything (teachers included) is trained and saved in the run; nothing pretrained is needed here.
        return StudentsScorer(cfg)

    @staticmethod
    def fit(cfg: StudentsConfig, images, preprocess, seed: int = 0, log=print) -> StudentsScorer:
        return fit_scorer(cfg, images, preprocess, seed=seed, log=log)

    @staticmethod
    def derive(src: StudentsScorer, cfg: StudentsConfig, spec, seed: int) -> StudentsScorer:
        missing = [p for p in cfg.scales if p not in src.scales]
        if missing:
            raise AdrtError(f"receptive field {missing[0]} not in the run's scales {src.scales}")
        scorer = StudentsScorer(cfg)
        for i, p in enumerate(cfg.scales):
            k = src.scales.index(p)
            scorer.teachers[i].load_state_dict(src.teachers[k].state_dict())
            scorer.students[i].load_state_dict(src.students[k].state_dict())
            with torch.no_grad():
                for name in ("t_mean", "t_std", "err_stats", "var_stats"):
                    getattr(scorer, name)[i] = getattr(src, name)[k]
        return scorer


def single_scale(run, p: int, out, data=None, log=lambda *a, **k: None, overwrite: bool = False):
    """Write run folder ``out``: receptive field ``p`` alone of the multi-scale students run ``run``
    (its teacher, students and statistics unchanged), recalibrated on the run's held-out images
    (adrt.train.derive.derive; ``data`` defaults to the dataset recorded in the run)."""
    det, meta = load_run(run)
    if meta["method"] != "students":
        raise AdrtError(f"{run}: a {meta['method']!r} run, not a students run")
    if p not in det.scorer.scales:
        raise AdrtError(f"{run}: receptive field {p} not in the run's scales {det.scorer.scales}")
    return derive(run, out, data, log, overwrite, method="students", what=f"single_scale: p={p}", scales=(p,))
