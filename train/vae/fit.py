"""Training of VAE (kept beside the model, not in it): one stage of the shared trainer
(adrt.train.trainer), then the fitted buffers."""
from __future__ import annotations

import math

import torch

from adrt.train.generative.loop import check_images, train_network
from adrt.train.trainer import Session, to_tensor
from adrt.train.vae.model import VAEConfig, VAEScorer, check_config, energy, kl_divergence


def fit_scorer(cfg: VAEConfig, images, preprocess, seed: int = 0, log=print) -> VAEScorer:
    """Train on uint8 N×H×W×3 normal images; set the MMD references; returns the scorer in eval mode."""
    check_config(cfg)
    stride = 2 ** len(cfg.channels)
    check_images("vae", images, stride, cfg.sigma)
    h, w = images.shape[1:3]
    torch.manual_seed(seed)
    scorer = VAEScorer(cfg)
    net = scorer.net
    x_all = to_tensor(images, preprocess)
    n_values = x_all[0].numel()

    def loss_fn(x):
        mu, logvar = net.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = ((x - net.decode(z)) ** 2).flatten(1).sum(1).mean()
        kl = kl_divergence(mu, logvar).mean()
        return rec + cfg.beta * kl, {"mse": rec.item() / n_values, "kl": kl.item()}

    latent = (cfg.latent_dim, h // stride, w // stride)
    session = Session("vae", cfg, images, seed, {"scorer": scorer}, log)
    train_network(session, net, loss_fn, x_all, iterations=cfg.iterations, epochs=cfg.epochs,
                  batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                  describe=f"VAE, latent {latent[0]}×{latent[1]}×{latent[2]}")
    scorer.eval()
    g = torch.Generator().manual_seed(seed + 1)
    reps = math.ceil(cfg.mmd_ref_size / len(x_all))
    with torch.no_grad():
        agg = []
        for i in range(0, len(x_all), 32):
            mu, logvar = net.encode(x_all[i : i + 32])
            for _ in range(reps):
                agg.append((mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)).flatten(1))
        scorer.set_references(latent, torch.cat(agg), seed)
        x0 = x_all[:8]
        if cfg.k_steps:
            xk = scorer.project(x0)
            e0 = energy(net, x0, x0, cfg.beta, cfg.lam).mean()
            ek = energy(net, xk, x0, cfg.beta, cfg.lam).mean()
            log(f"  projection on {len(x0)} training images: energy {float(e0):.4g} -> {float(ek):.4g} in "
                f"{cfg.k_steps} steps (step_size {cfg.step_size}, lam {cfg.lam}); "
                f"mean |x0 - xK| {float((x0 - xk).abs().mean()):.4f}")
        scorer(x0[:4])   # raises on a non-finite map or score (e.g. a step size that diverges)
    return scorer
