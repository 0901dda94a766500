"""The fused detector: uint8 NHWC images in, normalised anomaly map and score out.

Every method provides a *scorer* (an ``nn.Module`` mapping normalised NCHW float images to a
patch-level raw map ``(N, h, w)`` and, optionally, its own image score ``(N,)``). ``Detector``
wraps it with everything else that the exported graph contains: cast, scale, mean/std and layout
change in front; upsampling to input size, Gaussian smoothing and calibration behind. Its eval
forward *is* the graph that ``adrt export`` writes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The input spec and calibration record are the bundle contract's (torch-free), re-exported here.
from adrt.contract import INPUT_NAME, INPUT_NAMES, OUTPUT_NAMES, RESIZE, Calibration, Geometry, InputSpec  # noqa: F401


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius ceil(4·sigma), as in the PatchCore paper's smoothing."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """n×n matrix K with K @ v = Gaussian-smoothed v under reflect padding (pad < n; folded in).

    Vectorised (a handful of ops): it may run inside a trace, where the exporter folds it to a constant.
    """
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    j = torch.arange(n).unsqueeze(1) + torch.arange(-r, r + 1).unsqueeze(0)      # n×(2r+1) source indices
    if n > 1:
        # reflect (no edge repeat), folding again for kernels wider than the signal: period 2(n-1)
        j = torch.remainder(j, 2 * (n - 1))
        j = torch.where(j > n - 1, 2 * (n - 1) - j, j)
    else:
        j = torch.zeros_like(j)
    return torch.zeros(n, n).scatter_add(1, j, k.unsqueeze(0).expand(n, -1).contiguous())


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """n_out×n_in matrix U with U @ v = ``F.interpolate(v, n_out, mode="bilinear", align_corners=False)``
    along one axis (half-pixel centres, edges clamped; no antialiasing, as F.interpolate).

    Vectorised (a handful of ops): it may run inside a trace, where the exporter folds it to a constant.
    """
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().clamp_max(n_in - 1)
    lam = (src - i0).unsqueeze(1)
    i0 = i0.long().unsqueeze(1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    mat = torch.zeros(n_out, n_in)
    return mat.scatter_add(1, i0, 1.0 - lam).scatter_add(1, i1, lam)


class GaussianBlur(nn.Module):
    """Gaussian blur of an N×H×W map, reflect padding, as two matmuls with banded matrices.

    # matmul, not conv: a 1-channel 33-tap conv is slow on every backend, a GEMM is not, and the
    # reflect padding is folded into the matrices so no Pad op is needed.

    :meth:`upsample` folds the bilinear upsampling of a low-resolution patch map into the same
    two matrices (both are linear and separable): ``(K_h U_h) m (K_w U_w)ᵀ`` costs H·h·w + H·w·W
    multiply-adds instead of a Resize plus H·W·(H+W) — for PatchCore's 32×32 map at 256×256,
    2.4 M instead of 33.6 M.
    """

    def __init__(self, sigma: float, height: int, width: int):
        super().__init__()
        self.sigma = float(sigma)
        if self.sigma > 0:
            self.register_buffer("k_h", blur_matrix(height, sigma), persistent=False)
            self.register_buffer("k_w_t", blur_matrix(width, sigma).t().contiguous(), persistent=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return m
        return self.k_h @ (m @ self.k_w_t)

    def upsample(self, m: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Bilinear upsampling of N×h×w to N×height×width followed by the blur, as two GEMMs."""
        h, w = m.shape[-2:]
        if (h, w) == (height, width):
            return self(m)
        name = f"up_{h}x{w}_to_{height}x{width}"
        if hasattr(self, name + "_h"):
            a_h, a_w_t = getattr(self, name + "_h"), getattr(self, name + "_w_t")
        else:
            a_h, a_w = bilinear_matrix(height, h).to(m.device), bilinear_matrix(width, w).to(m.device)
            if self.sigma > 0:
                a_h, a_w = self.k_h @ a_h, self.k_w_t.t() @ a_w
            a_w_t = a_w.t().contiguous()
            # Kept as non-persistent buffers once computed eagerly (not in the state dict: they
            # follow from the shapes). Export runs one eager forward first, so the traced graph
            # holds them as two small initializers; under a trace itself they are only computed.
            if type(m) is torch.Tensor:
                self.register_buffer(name + "_h", a_h, persistent=False)
                self.register_buffer(name + "_w_t", a_w_t, persistent=False)
        # (A_h m) first: its H×w result is the smaller intermediate when h ≤ H.
        return (a_h @ m) @ a_w_t


#: TensorRT's TopK layer takes K up to 3840.
MAX_TOPK = 3840


def topk_count(image_score: str, pixels: int) -> int:
    """Pixels the image score averages: 0 for ``max`` (the method's own image score, or the map's
    maximum), else k = max(1, round(fraction · pixels)) for ``topk:FRACTION`` (e.g. ``topk:0.01``)."""
    from adrt.errors import AdrtError

    if image_score == "max":
        return 0
    kind, _, frac = str(image_score).partition(":")
    try:
        f = float(frac)
    except ValueError:
        f = float("nan")
    if kind != "topk" or not 0.0 < f <= 1.0:
        raise AdrtError(f"image score {image_score!r}: expected 'max' or 'topk:FRACTION' with 0 < FRACTION <= 1 "
                        f"(e.g. topk:0.01, the mean of the top 1 % of the map)")
    k = max(1, int(round(f * pixels)))
    if k > MAX_TOPK:
        raise AdrtError(f"image score {image_score!r}: the top {k} of {pixels} pixels; TensorRT's TopK takes at "
                        f"most {MAX_TOPK}: use a fraction up to {MAX_TOPK / pixels:.3g}")
    return k


class Detector(nn.Module):
    """uint8 ``image`` N×H×W×C → (``anomaly_map`` N×H×W, ``score`` N, ``raw_map``, ``raw_score``).

    ``anomaly_map``/``score`` are calibrated so that 0.5 is the threshold:
    ``sigmoid((raw - threshold) / scale)`` with threshold and scale measured on held-out normal
    images (monotone, so rankings and AUROC are those of the raw values).

    ``geometry`` (adrt.contract.Geometry): with a ``tile`` geometry the input is the full frame
    (``spec``'s H×W); it is cut into tiles of the model's size, the scorer runs on them as one batch,
    and the tiles' maps (upsampled and smoothed per tile, as an untiled model's) are stitched
    (adrt.train.tiling); the score is the maximum of the stitched map. Calibration applies to the
    stitched map and the frame's score.
    """

    output_names = OUTPUT_NAMES

    def __init__(self, scorer: nn.Module, spec: InputSpec, sigma: float = 4.0, geometry: Geometry = RESIZE,
                 image_score: str = "max"):
        super().__init__()
        self.scorer = scorer
        self.spec = spec
        self.geometry = geometry
        self.image_score = image_score
        self.topk = topk_count(image_score, spec.height * spec.width)   # of the (stitched) frame's map
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.tiling = None
        if geometry.tiled:
            from adrt.train.tiling import Tiling

            self.tiling = Tiling(geometry, spec.height, spec.width)
        self.blur = GaussianBlur(sigma, *self.model_size)
        # Calibration (raw units). Identity-ish until calibrate() fills them.
        self.register_buffer("map_threshold", torch.tensor(0.0))
        self.register_buffer("map_scale", torch.tensor(1.0))
        self.register_buffer("score_threshold", torch.tensor(0.0))
        self.register_buffer("score_scale", torch.tensor(1.0))

    @property
    def model_size(self) -> tuple[int, int]:
        """(height, width) the scorer sees: the tile's for a tiled detector, else the input's."""
        return self.geometry.tile if self.tiling is not None else (self.spec.height, self.spec.width)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 N×H×W×C → normalised float N×C×H×W (inside the graph, so callers pass frames as they come)."""
        # Cast first, then change the layout: TensorRT takes uint8 only as a network input that a
        # Cast consumes (no uint8 intermediate tensor, e.g. a transposed image).
        x = image.to(torch.float32).permute(0, 3, 1, 2) * (1.0 / 255.0)
        return (x - self.mean) / self.std

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs: ``image``, and ``reference`` for a scorer that compares each image
        with a reference image given at run time (its ``paired`` attribute)."""
        return INPUT_NAMES if self.paired else (INPUT_NAME,)

    @property
    def paired(self) -> bool:
        """True when every image needs its reference image (a second graph input)."""
        return bool(getattr(self.scorer, "paired", False))

    def raw(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated map N×H×W (upsampled, smoothed) and score N. ``reference``: the uint8
        reference images (same shape as ``image``) of a paired scorer."""
        x = self.preprocess(image)
        if self.tiling is not None:
            x = self.tiling.cut(x)
        if reference is None:
            patch_map, patch_score = self.scorer(x)
        else:       # a paired scorer (never tiled: adrt.train.fit refuses it)
            patch_map, patch_score = self.scorer(x, self.preprocess(reference))
        m = self.blur.upsample(patch_map, *self.model_size)
        score = patch_score
        if self.tiling is not None:
            # The frame's score comes from the stitched map, not from the tiles' own scores
            # (e.g. PatchCore's reweighted maximum): those count each tile's edges at full weight,
            # where the blend discounts them in favour of the neighbouring tile's centre (on the
            # 1 MP synthetic check: image AUROC 0.969 against 0.887, benchmarks/results/tiling_synth.md).
            m = self.tiling.stitch(m)
            score = None
        if self.topk:
            # Mean of the k largest map values: one hot pixel (e.g. at the border) cannot decide alone.
            score = m.flatten(1).topk(self.topk, dim=1).values.mean(dim=1)
        elif score is None:
            score = m.flatten(1).amax(dim=1)
        return m, score

    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None):
        raw_map, raw_score = self.raw(image, reference)
        amap = torch.sigmoid((raw_map - self.map_threshold) / self.map_scale)
        score = torch.sigmoid((raw_score - self.score_threshold) / self.score_scale)
        return amap, score, raw_map, raw_score


@torch.inference_mode()
def run_raw(detector: Detector, images, batch_size: int = 8, references=None):
    """Raw maps and scores (numpy) for uint8 N×H×W×C images (and their ``references`` for a
    paired detector), in batches."""
    maps, scores = [], []
    if detector.tiling is not None:          # a tiled frame is a batch of tiles already
        batch_size = max(1, batch_size // detector.tiling.n_tiles)
    for i in range(0, len(images), batch_size):
        ref = None if references is None else torch.from_numpy(references[i : i + batch_size])
        m, s = detector.raw(torch.from_numpy(images[i : i + batch_size]), ref)
        maps.append(m.numpy())
        scores.append(s.numpy())
    import numpy as np

    return np.concatenate(maps), np.concatenate(scores)


def calibrate(detector: Detector, normal_images, k_score: float = 3.0, k_map: float = 3.0, *,
              options=None, defects=None, references=None) -> Calibration:
    """Set thresholds from held-out normal images (and their ``references`` for a paired
    detector); scale = std of the normal values, so the normalised output
    ``sigmoid((raw - threshold) / std)`` crosses 0.5 at the threshold.

    ``options`` (adrt.thresholds.CalibrationOptions) picks the rule: mean + k·std (the default,
    k = ``k_score`` for scores and ``k_map`` for maps), a target false-positive rate, or F1-optimal
    on ``defects`` = (uint8 N×H×W×3 defect images, bool N×H×W masks or None). How each threshold
    was chosen and its expected FPR go into the record (``image``, ``pixel``)."""
    import numpy as np

    from adrt.thresholds import CalibrationOptions, image_threshold, pixel_threshold

    detector.eval()
    maps, scores = run_raw(detector, normal_images, references=references)
    _check_finite(maps, scores, "held-out normal image(s)")
    d_maps = d_scores = d_masks = None
    if defects is not None:
        d_maps, d_scores = run_raw(detector, defects[0])
        _check_finite(d_maps, d_scores, "defect image(s)")
        d_masks = defects[1]
    if options is None:
        img_opts, px_opts = CalibrationOptions("std", k=k_score), CalibrationOptions("std", k=k_map)
    else:
        img_opts = px_opts = options
    s_mean, s_std = float(scores.mean()), float(scores.std())
    m_mean, m_std = float(maps.mean()), float(maps.std())
    s_std = max(s_std, 1e-6 * max(abs(s_mean), 1.0))
    m_std = max(m_std, 1e-6 * max(abs(m_mean), 1.0))
    s_thr, image = image_threshold(scores, img_opts, d_scores)
    m_thr, pixel = pixel_threshold(maps, px_opts, d_maps, d_masks)
    cal = Calibration(
        n_images=len(normal_images), score_mean=s_mean, score_std=s_std, score_max=float(scores.max()),
        score_threshold=s_thr, score_scale=s_std,
        map_mean=m_mean, map_std=m_std, map_q999=float(np.quantile(maps, 0.999)),
        map_threshold=m_thr, map_scale=m_std,
        rule=f"threshold: image {_rule_text(image)}, pixel {_rule_text(pixel)} of held-out normal raw values; "
             "normalised = sigmoid((raw - threshold) / std)",
        image=image, pixel=pixel,
    )
    apply_calibration(detector, cal)
    return cal


def _rule_text(d) -> str:
    if d.rule == "std":
        return f"mean + {d.k:g}*std"
    return f"FPR {d.target_fpr:g}" if d.rule == "fpr" else f"F1-optimal ({d.n_defect} defect images)"


def _check_finite(maps, scores, what: str) -> None:
    import numpy as np

    if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
        from adrt.errors import AdrtError

        bad = np.flatnonzero(~(np.isfinite(scores) & np.isfinite(maps).reshape(len(maps), -1).all(1)))
        raise AdrtError(f"calibration: the detector produced NaN/Inf on {what} {bad.tolist()}; "
                        "no threshold can be set (check the method's options, e.g. a step size)")


def apply_calibration(detector: Detector, cal: Calibration) -> None:
    detector.score_threshold.fill_(cal.score_threshold)
    detector.score_scale.fill_(cal.score_scale)
    detector.map_threshold.fill_(cal.map_threshold)
    detector.map_scale.fill_(cal.map_scale)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize inside the graph: average pooling for integer factors (anti-aliased, exact in
    ONNX), bilinear otherwise; no-op at the same size."""
    h, w = x.shape[-2:]
    if size <= 0 or (h == size and w == size):
        return x
    if h % size == 0 and w % size == 0 and h // size == w // size:
        return nn.functional.avg_pool2d(x, h // size)
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
