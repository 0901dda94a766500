"""Training of MemAE (kept beside the model, not in it): one stage of the shared trainer
(adrt.train.trainer), then the fitted buffers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adrt.train.generative.loop import check_images, train_network
from adrt.train.memae.model import MemAEConfig, MemAEScorer, check_config, entropy
from adrt.train.trainer import Session, to_tensor


def fit_scorer(cfg: MemAEConfig, images, preprocess, seed: int = 0, log=print) -> MemAEScorer:
    """Train on uint8 N×H×W×3 normal images; set the MMD reference; returns the scorer in eval mode."""
    check_config(cfg)
    stride = 2 ** len(cfg.channels)
    check_images("memae", images, stride, cfg.sigma)
    torch.manual_seed(seed)
    scorer = MemAEScorer(cfg)
    x_all = to_tensor(images, preprocess)
    net = scorer.net

    def loss_fn(x):
        rec, _, wt = net(x)
        mse = F.mse_loss(rec, x)
        if wt is None:
            return mse, {"mse": mse.item()}
        ent = entropy(wt)
        return mse + cfg.entropy_weight * ent, {"mse": mse.item(), "entropy": ent.item()}

    kind = f"MemAE, memory {cfg.mem_size}×{cfg.channels[-1]}" if cfg.mem_size else "plain AE (mem_size=0)"
    session = Session("memae", cfg, images, seed, {"scorer": scorer}, log)
    train_network(session, net, loss_fn, x_all, iterations=cfg.iterations, epochs=cfg.epochs,
                  batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, describe=kind)
    scorer.eval()
    with torch.no_grad():
        z = torch.cat([net.encoder(x_all[i : i + 32]) for i in range(0, len(x_all), 32)])
        scorer.set_reference(z, seed)
        if net.memory is not None:
            wt = net.memory.address(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
            used = int((wt.amax(0) > 0).sum())
            log(f"  memory items addressed by the training queries: {used}/{cfg.mem_size}; "
                f"mean non-zero weights per query {float((wt > 0).sum(1).float().mean()):.1f}")
        scorer(x_all[:4])   # raises on a non-finite map or score
    return scorer
