"""Covariance-based entropy control (Cui et al. 2025, ``PRIME-RL/Entropy-Mechanism-of-RL``).

cov_t = (A_t − mean A)(log π_θ,t − mean log π_θ), plain means over valid tokens, detached.

- ``kl_cov``: the top-k tokens by cov, k = max(1, floor(N·k_percent/100)) (k_percent is in **percent**),
  get ℓ = −A r + λ|log π_θ − log π_old|; all other tokens get plain −A r (no clipping). On-policy |log r| = 0
  with zero (sub)gradient, so KL-Cov reduces to unclipped PG (why the paper runs it off-policy only).
- ``clip_cov``: PPO-clip; among valid, not-PPO-clipped tokens with lb < cov < ub, up to
  max(1, floor(clip_ratio·N)) tokens chosen uniformly at random (torch's global RNG, seeded by the run) get
  their loss multiplied by 0. ``policy/clipfrac`` is the fraction zeroed.

Both select per micro-batch (the reference's per-GPU micro-batches) and aggregate over the whole mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lpreg.checks import NON_NEGATIVE, PROBABILITY, Range, embedded, ranged
from lpreg.core.losses import (
    LossInputs,
    PPOClipConfig,
    RegularizerConfig,
    aggregate,
    fraction_count,
    masked_mean,
    pg_metrics,
    ppo_clip,
    ratio,
    register,
    select_extreme,
    token_share,
)
from lpreg.core.reduce import Sum


def token_covariance(adv: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """cov_t = (A_t − mean A)(log π_t − mean log π) over valid tokens, detached; ``[B, T]``."""
    lp = log_prob.detach()
    return (adv - masked_mean(adv, mask, 0.0)) * (lp - masked_mean(lp, mask, 0.0))


@dataclass
class KLCovConfig(RegularizerConfig):
    name: str = "kl_cov"
    # k_percent is in percent units: k = max(1, floor(N·k_percent/100)). Reference: 0.2 (7B) / 0.02 (32B).
    # An embedded rollout has ~1,000 tokens, where 0.2 selects 2 tokens; 1.0 selects ~10. Use 0.2 at real scale.
    k_percent: float = embedded(1.0, "0.2 (7B) / 0.02 (32B)", Range(0, 100, lo_open=True))
    kl_coef: float = ranged(1.0, NON_NEGATIVE)  # λ = ppo_kl_coef


def kl_cov_selection(inp: LossInputs, cfg: KLCovConfig) -> torch.Tensor:
    """The top-k tokens by covariance ``[B, T]`` (the tokens KL-Cov penalizes)."""
    valid = inp.response_mask > 0
    cov = token_covariance(inp.advantages, inp.log_prob, inp.response_mask)  # [B, T]
    return select_extreme(cov, valid, fraction_count(cfg.k_percent / 100, int(valid.sum())), largest=True)


@register("kl_cov", KLCovConfig, label="KL-Cov", color="#9467bd", acts_on=kl_cov_selection)
def kl_cov_loss(inp: LossInputs, cfg: KLCovConfig):
    """ℓ_t = −A r + λ·1[t ∈ top-k cov]·|log π_θ − log π_old|, aggregated with ``loss_agg`` (token-mean)."""
    mask = inp.response_mask
    r = ratio(inp.log_prob, inp.old_log_prob)
    pg_t = -inp.advantages * r  # [B, T]
    sel = kl_cov_selection(inp, cfg)
    kl_t = cfg.kl_coef * (inp.log_prob - inp.old_log_prob).abs() * sel
    pg, reg = aggregate(pg_t, mask, cfg.loss_agg, inp.norm), aggregate(kl_t, mask, cfg.loss_agg, inp.norm)
    metrics = pg_metrics(pg, reg, token_share(torch.zeros_like(sel), mask))
    metrics["kl_cov/selected"] = Sum(float(sel.sum()))
    return pg + reg, metrics


@dataclass
class ClipCovConfig(PPOClipConfig):
    name: str = "clip_cov"
    # fraction of tokens zeroed: clip_num = max(1, floor(clip_ratio·N)) (reference)
    clip_ratio: float = ranged(0.0002, PROBABILITY)
    cov_lb: float = 1.0  # clip_cov_lb
    cov_ub: float = 5.0  # clip_cov_ub
    clip_low: float = ranged(1.0, NON_NEGATIVE)  # Entropy-Mechanism recipes use ε = 1/1 with Clip-Cov
    clip_high: float = ranged(1.0, NON_NEGATIVE)


@register("clip_cov", ClipCovConfig, label="Clip-Cov", color="#8c564b")
def clip_cov_loss(inp: LossInputs, cfg: ClipCovConfig):
    """PPO-clip with the gradient of up to max(1, floor(ratio·N)) random tokens in lb < cov < ub removed."""
    mask = inp.response_mask
    valid = mask > 0
    loss_t, clipped = ppo_clip(ratio(inp.log_prob, inp.old_log_prob), inp.advantages, cfg.clip_low, cfg.clip_high)
    cov = token_covariance(inp.advantages, inp.log_prob, mask)
    band = (valid & ~clipped & (cov > cfg.cov_lb) & (cov < cfg.cov_ub)).flatten()
    n_clip = fraction_count(cfg.clip_ratio, int(valid.sum()))
    idx = torch.nonzero(band).flatten()
    chosen = idx[torch.randperm(len(idx), device=idx.device)[:n_clip]]
    keep = torch.ones_like(loss_t).flatten()
    keep[chosen] = 0.0
    keep = keep.view_as(loss_t)
    pg = aggregate(loss_t * keep, mask, cfg.loss_agg, inp.norm)
    return pg, pg_metrics(pg, torch.zeros(()), token_share(keep == 0, mask))
