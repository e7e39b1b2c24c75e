"""Covariance-based entropy control (Cui et al.; spec §3 items 5 and 6).

cov_t = (A_t − mean A)(log π_θ,t − mean log π_θ), plain means over valid tokens, detached.

- ``kl_cov``: the top-k tokens by cov, k = max(1, floor(N·k_percent/100)) (k_percent is in **percent**),
  get ℓ = −A r + λ|log π_θ − log π_old|; all other tokens get plain −A r (no clipping). On-policy |log r| = 0
  with zero (sub)gradient, so KL-Cov reduces to unclipped PG (why the paper runs it off-policy only).
- ``clip_cov``: PPO-clip; among valid, not-PPO-clipped tokens with lb < cov < ub, up to
  max(1, floor(clip_ratio·N)) tokens chosen uniformly at random (torch's global RNG, seeded by the run) get
  their loss multiplied by 0. ``policy/clipfrac`` is the fraction zeroed.
"""

from __future__ import annotations

import math

import torch

from lpreg.losses import LossInputs, masked_mean, pg_metrics, ppo_clip, ratio, register_loss


def token_covariance(adv: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """cov_t = (A_t − mean A)(log π_t − mean log π) over valid tokens, detached; ``[B, T]``."""
    lp = log_prob.detach()
    return (adv - masked_mean(adv, mask, 0.0)) * (lp - masked_mean(lp, mask, 0.0))


@register_loss("kl_cov")
def kl_cov_loss(inp: LossInputs, cfg):
    """ℓ_t = −A r + λ·1[t ∈ top-k cov]·|log π_θ − log π_old|, token-mean."""
    mask = inp.response_mask
    valid = mask > 0
    r = ratio(inp.log_prob, inp.old_log_prob)
    pg_t = -inp.advantages * r  # [B, T]
    cov = token_covariance(inp.advantages, inp.log_prob, mask).masked_fill(~valid, -math.inf).flatten()
    k = max(1, math.floor(int(valid.sum()) * cfg["k_percent"] / 100))
    top = torch.sort(-cov, stable=True).indices[:k]
    sel = torch.zeros_like(cov, dtype=torch.bool)
    sel[top] = True
    sel = sel.view_as(mask) & valid  # [B, T]
    kl_t = cfg["kl_coef"] * (inp.log_prob - inp.old_log_prob).abs() * sel
    pg, reg = masked_mean(pg_t, mask), masked_mean(kl_t, mask)
    metrics = pg_metrics(pg, reg, torch.zeros(()))
    metrics["kl_cov/selected"] = float(sel.sum())
    return pg + reg, metrics


@register_loss("clip_cov")
def clip_cov_loss(inp: LossInputs, cfg):
    """PPO-clip with the gradient of up to max(1, floor(ratio·N)) random tokens in lb < cov < ub removed."""
    mask = inp.response_mask
    valid = mask > 0
    loss_t, clipped = ppo_clip(ratio(inp.log_prob, inp.old_log_prob), inp.advantages, cfg["clip_low"],
                               cfg["clip_high"])
    cov = token_covariance(inp.advantages, inp.log_prob, mask)
    band = (valid & ~clipped & (cov > cfg["cov_lb"]) & (cov < cfg["cov_ub"])).flatten()
    n_clip = max(1, math.floor(cfg["clip_ratio"] * int(valid.sum())))
    idx = torch.nonzero(band).flatten()
    chosen = idx[torch.randperm(len(idx), device=idx.device)[:n_clip]]
    keep = torch.ones_like(loss_t).flatten()
    keep[chosen] = 0.0
    keep = keep.view_as(loss_t)
    pg = masked_mean(loss_t * keep, mask)
    return pg, pg_metrics(pg, torch.zeros(()), masked_mean(1 - keep, mask))
