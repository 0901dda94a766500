"""VAE detector: reconstruction error, iterative energy-based projection, or the MMD score.

* The network is a small fully convolutional VAE (conv k4 s2 + ELU levels, a 1×1 head to the mean
  and log-variance of a d×(H/2^L)×(W/2^L) latent, a mirrored decoder of transposed convs), so it
  works at any input size that is a multiple of 2^L. At test time the decoder reads the posterior
  mean (no sampling).
* Projection (Dehaene et al., "Iterative energy-based projection on a normal data manifold for
  anomaly localization", ICLR 2020): starting from the input x₀, K steps of
  x_{t+1} = x_t − α·(∇E(x_t) ⊙ w(x_t − f(x_t))) on the energy
  E(x) = ‖x − f(x)‖² + β·KL(q(z|x) ‖ p(z)) + λ·‖x − x₀‖₁ (the VAE loss on the mean path plus the
  paper's regulariser toward the input), the gradient weighted per pixel by the reconstruction
  error w(r) = |r| (or r², ``grad_weight``). Map = Σ_c |x₀ − x_K| (``error="l1"``).
  In the graph the K steps are unrolled and ∇E is computed by an explicit backward pass written
  here (transposed convs with the same weights, ELU derivatives): no autograd at run time.
  ``project_autograd`` is the eager autograd reference the explicit version is tested against.
  K = 0 is the plain reconstruction error Σ_c |x₀ − f(x₀)|.
* MMD score (Šmídl, Bím, Pevný, "Anomaly scores for generative models", arXiv 1905.11890):
  the squared maximum mean discrepancy between samples of the encoder's posterior q(z|x₀)
  (S fixed standard-normal draws ε, z_s = μ + σ ⊙ ε_s, so the graph is deterministic) and a
  reference sample: the prior p(z) = N(0, I) or the aggregated posterior of the normal training
  images, with an IMQ or RBF kernel. It is an image score; the map stays the projection or
  reconstruction error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adrt.errors import AdrtError
from adrt.train.trainer import check_checkpoint_options
from adrt.train.generative.heads import (ERRORS, KERNELS, MapScore, ReconError, guard_finite, kernel, kernel_scale,
                                         mmd2, sq_dists)

SCORES = ("recon", "mmd")
REFS = ("prior", "aggregate")
GRAD_WEIGHTS = ("abs", "sq", "none")


@dataclass(frozen=True)
class VAEConfig:
    # Network: conv (k4, stride 2) + ELU per entry, mirrored decoder; input sides must be multiples
    # of 2**len(channels). Latent: latent_dim channels on the (size/32)² grid (4×4×32 at 128 px).
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    latent_dim: int = 32
    beta: float = 1.0                   # KL weight in the loss (training) and in the energy (projection)
    # Projection (test time; changeable without retraining: VAE.TEST_TIME_OPTIONS, adrt.train.derive).
    # The paper iterates to convergence; K = 5 keeps the CPU latency (~3.3 ms per step in ONNX Runtime at
    # 128 px, 1 thread) and the export time (graph grows linearly in K) small. α and λ were set on the
    # synthetic data (stable: 2·α·|r| < 1 on the direct term for |r| ≤ 2), not tuned on real test sets.
    k_steps: int = 5                    # K unrolled steps in the graph; 0 = plain reconstruction error
    step_size: float = 0.1              # α
    lam: float = 0.5                    # λ of the regulariser λ·‖x − x₀‖₁ (pins pixels with |x − f(x)| < λ/2)
    grad_weight: str = "abs"            # per-pixel weight of ∇E: "abs" |x − f(x)|, "sq" (x − f(x))², "none"
    error: str = "l1"                   # map: "l1" Σ_c |x₀ − x_K| (paper), "se", "ssim" (against f(x₀) when k_steps = 0)
    score: str = "recon"                # image score: "recon" max of the smoothed map; "mmd" MMD² of q(z|x₀) vs mmd_ref
    mmd_ref: str = "prior"              # "prior" N(0, I) samples, or "aggregate" posterior samples of the training images
    mmd_kernel: str = "imq"             # "imq" C/(C + d²) or "rbf" exp(−d²/C), C = 2·dim·σ²_ref·mmd_scale²
    mmd_scale: float = 1.0
    mmd_samples: int = 16               # S draws from q(z|x₀) (fixed ε, part of the weights)
    mmd_ref_size: int = 256             # M reference points
    # Training: Adam on the ELBO (Σ squared error + β·KL). Steps = min(iterations, epochs × batches per pass):
    # CPU defaults, 400 steps of 8 images at 128 px ≈ 17 passes over MVTec bottle.
    iterations: int = 400
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    sigma: float = 4.0                  # Gaussian smoothing of the map (Detector; also the image score)
    checkpoint: str = ""                # training-state file: saved as training goes; a rerun resumes from it
    checkpoint_every: int = 100         # steps between checkpoint saves (0: only at the end of training)

    def __post_init__(self):
        check_config(self)


def check_config(cfg: VAEConfig) -> None:
    """Raise AdrtError naming the option when a value cannot work."""
    check_checkpoint_options("vae", cfg)
    if not cfg.channels or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in cfg.channels):
        raise AdrtError(f"vae option channels={cfg.channels!r}: expected a non-empty list of integers >= 1")
    for name, lo in (("latent_dim", 1), ("k_steps", 0), ("mmd_samples", 2), ("mmd_ref_size", 2),
                     ("iterations", 1), ("epochs", 1), ("batch_size", 1)):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise AdrtError(f"vae option {name}={v!r}: expected an integer >= {lo}")
    for name, v, allowed in (("error", cfg.error, ERRORS), ("score", cfg.score, SCORES), ("mmd_ref", cfg.mmd_ref, REFS),
                             ("mmd_kernel", cfg.mmd_kernel, KERNELS), ("grad_weight", cfg.grad_weight, GRAD_WEIGHTS)):
        if v not in allowed:
            raise AdrtError(f"vae option {name}={v!r}: expected one of {', '.join(allowed)}")
    for name in ("beta", "lam", "sigma"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and v >= 0 and v < float("inf")):
            raise AdrtError(f"vae option {name}={v!r}: expected a finite number >= 0")
    for name in ("lr", "mmd_scale", "step_size"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise AdrtError(f"vae option {name}={v!r}: expected a finite positive number")


def _elu_grad(h: torch.Tensor) -> torch.Tensor:
    """ELU'(a) from h = ELU(a): 1 where a > 0 (h > 0), exp(a) = h + 1 elsewhere, i.e. min(h, 0) + 1
    (two element-wise ops per layer in the graph)."""
    return h.clamp(max=0.0) + 1.0


class VAENet(nn.Module):
    """x B×3×H×W → encoder (μ, log σ²) of a B×d×h×w latent; decoder z → B×3×H×W."""

    def __init__(self, channels=(16, 32, 64, 64, 64), latent_dim: int = 32, in_channels: int = 3):
        super().__init__()
        chans = (in_channels, *channels)
        self.enc = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1) for i in range(len(channels)))
        self.head = nn.Conv2d(chans[-1], 2 * latent_dim, 1)
        self.dec_in = nn.Conv2d(latent_dim, chans[-1], 1)
        # dec[j] maps level L−j to level L−j−1 (the last one to the image, no activation)
        self.dec = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1)
                                 for i in reversed(range(len(channels))))
        self.latent_dim = latent_dim
        self.stride = 2 ** len(channels)

    def encode(self, x: torch.Tensor, cache: list | None = None):
        h = x
        for conv in self.enc:
            h = F.elu(conv(h))
            if cache is not None:
                cache.append(h)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        h = F.elu(self.dec_in(z))
        if cache is not None:
            cache.append(h)
        for j, convt in enumerate(self.dec):
            h = convt(h)
            if j < len(self.dec) - 1:
                h = F.elu(h)
                if cache is not None:
                    cache.append(h)
        return h

    def forward(self, x: torch.Tensor):
        """Mean path: (f(x) = decode(μ), μ, log σ²)."""
        mu, logvar = self.encode(x)
        return self.decode(mu), mu, logvar

    def loss_grad(self, x: torch.Tensor, beta: float):
        """f(x) and ∂L/∂x of L(x) = ‖x − f(x)‖² + β·KL(q(z|x) ‖ N(0, I)) per image, by an explicit
        backward pass (the transpose of every conv is a transposed conv with the same weights and
        vice versa; no autograd, so it exports as plain Conv/ConvTranspose ops)."""
        enc_h: list = []
        dec_h: list = []
        mu, logvar = self.encode(x, enc_h)
        f = self.decode(mu, dec_h)
        r = x - f
        # decoder, output back to the latent: δ at f is ∂L/∂f = −2r
        d = -2.0 * r
        for j in reversed(range(len(self.dec))):
            convt = self.dec[j]
            d = F.conv2d(d, convt.weight, stride=convt.stride, padding=convt.padding)
            d = d * _elu_grad(dec_h[j])       # dec_h[j] is the input of dec[j] (dec_h[0] = ELU(dec_in(μ)))
        d_mu = F.conv_transpose2d(d, self.dec_in.weight)
        # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²): ∂/∂μ = μ, ∂/∂log σ² = ½(σ² − 1)
        d_mu = d_mu + beta * mu
        d_lv = (0.5 * beta) * (torch.exp(logvar) - 1.0)
        d = F.conv_transpose2d(torch.cat([d_mu, d_lv], 1), self.head.weight)
        for i in reversed(range(len(self.enc))):
            d = d * _elu_grad(enc_h[i])
            conv = self.enc[i]
            d = F.conv_transpose2d(d, conv.weight, stride=conv.stride, padding=conv.padding)
        # direct path: ∂‖x − f‖²/∂x = 2r
        return f, 2.0 * r + d


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over the latent, per image (B,)."""
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).flatten(1).sum(1)


def energy(net: VAENet, x: torch.Tensor, x0: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """E(x) per image (B,): ‖x − f(x)‖² + β·KL + λ·‖x − x₀‖₁ on the mean path."""
    f, mu, logvar = net(x)
    return ((x - f) ** 2).flatten(1).sum(1) + beta * kl_divergence(mu, logvar) + lam * (x - x0).abs().flatten(1).sum(1)


def _weight(r: torch.Tensor, kind: str) -> torch.Tensor | float:
    if kind == "abs":
        return r.abs()
    if kind == "sq":
        return r * r
    return 1.0


class VAEScorer(nn.Module):
    """x N×3×H×W (normalised) → (map N×H×W, image score N).

    Buffers filled by ``fit`` (saved with the weights): ``eps`` (S×D standard-normal draws, D =
    latent size of the training resolution), ``ref_prior`` and ``ref_aggregate`` (M×D reference
    samples), their kernel constants ``c_prior``/``c_aggregate`` and ``ref_term`` (the reference's
    own term of the MMD for the configured kernel). The latent-sized ones start empty in ``build``
    and take their saved shapes on loading.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.net = VAENet(cfg.channels, cfg.latent_dim)
        self.error = ReconError(cfg.error)
        self.map_score = MapScore(cfg.sigma)
        for name in ("eps", "ref_prior", "ref_aggregate"):
            self.register_buffer(name, torch.zeros(0, 0))
        for name in ("c_prior", "c_aggregate", "ref_term"):
            self.register_buffer(name, torch.tensor(1.0))

    # --- MMD ---
    def set_references(self, latent_shape, aggregate: torch.Tensor, seed: int = 0) -> None:
        """Draw ε and the prior reference for a latent of ``latent_shape`` (d, h, w); keep M of the
        ``aggregate`` posterior samples (K×D, from the training images)."""
        g = torch.Generator().manual_seed(seed + 7919)
        dim = int(torch.tensor(latent_shape).prod())
        m = self.cfg.mmd_ref_size
        self.eps = torch.randn(self.cfg.mmd_samples, dim, generator=g)
        self.ref_prior = torch.randn(m, dim, generator=g)
        idx = torch.randperm(aggregate.shape[0], generator=g)[:m]
        if idx.numel() < m:
            idx = idx[torch.randint(idx.numel(), (m,), generator=g)]
        self.ref_aggregate = aggregate[idx].clone()
        self.c_prior.fill_(2.0 * dim)                 # σ² = 1 for N(0, I)
        self.c_aggregate.fill_(kernel_scale(self.ref_aggregate, 1.0))
        self.refresh()

    def _ref(self):
        if self.cfg.mmd_ref == "prior":
            return self.ref_prior, self.c_prior * self.cfg.mmd_scale ** 2
        return self.ref_aggregate, self.c_aggregate * self.cfg.mmd_scale ** 2

    def refresh(self) -> None:
        """Recompute the input-independent MMD term for the configured reference and kernel."""
        ref, c = self._ref()
        if ref.numel():
            self.ref_term.fill_(float(kernel(sq_dists(ref, ref), self.cfg.mmd_kernel, c).mean()))

    def mmd_score(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """MMD² between S samples of q(z|x) and the reference sample, per image (N,)."""
        ref, c = self._ref()
        if self.eps.shape[1] != mu[0].numel():
            raise AdrtError(f"vae: the MMD head was fitted for a latent of {self.eps.shape[1]} values, this input "
                            f"gives {mu[0].numel()} (another input size?)")
        m, s = mu.flatten(1).unsqueeze(1), torch.exp(0.5 * logvar).flatten(1).unsqueeze(1)
        z = m + s * self.eps.unsqueeze(0)                                  # N×S×D
        return mmd2(z, ref, self.cfg.mmd_kernel, c, self.ref_term)

    # --- projection ---
    def step(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """One projection step x_t → x_{t+1} with the explicit gradient (what the graph contains)."""
        cfg = self.cfg
        f, g = self.net.loss_grad(x, cfg.beta)
        if cfg.lam:
            g = g + cfg.lam * torch.sign(x - x0)
        return x - cfg.step_size * g * _weight(x - f, cfg.grad_weight)

    def project(self, x0: torch.Tensor, k_steps: int | None = None) -> torch.Tensor:
        """x_K: ``k_steps`` (default cfg.k_steps) explicit steps from x₀, unrolled in the graph."""
        x = x0
        for _ in range(self.cfg.k_steps if k_steps is None else k_steps):
            x = self.step(x, x0)
        return x

    def project_autograd(self, x0: torch.Tensor, k_steps: int | None = None) -> torch.Tensor:
        """Reference: the same iteration with ∇E from torch.autograd (eager only)."""
        cfg = self.cfg
        x = x0.detach()
        for _ in range(cfg.k_steps if k_steps is None else k_steps):
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                e = energy(self.net, xg, x0, cfg.beta, cfg.lam).sum()
                (g,) = torch.autograd.grad(e, xg)
            with torch.no_grad():
                r = x - self.net(x)[0]
                x = x - cfg.step_size * g * _weight(r, cfg.grad_weight)
        return x

    def forward(self, x: torch.Tensor):
        cfg = self.cfg
        if x.shape[-1] % self.net.stride or x.shape[-2] % self.net.stride:
            raise AdrtError(f"vae: input {x.shape[-2]}×{x.shape[-1]} is not a multiple of {self.net.stride}")
        if cfg.k_steps > 0:
            target = self.project(x)
            what = (f"vae projection diverged (k_steps={cfg.k_steps}, step_size={cfg.step_size}, lam={cfg.lam}); "
                    "use a smaller step_size")
        else:
            target = self.net(x)[0]
            what = "vae reconstruction"
        amap = self.error(x, target)
        if cfg.score == "mmd":
            score = self.mmd_score(*self.net.encode(x))
        else:
            score = self.map_score(amap)
        return guard_finite(target, amap, score, what)
