"""GRPO / PPO-clip and the baselines built on it (spec §3 items 1, 2, 3, 4, 7).

- ``none``: PPO-clip GRPO, ε = 0.2/0.2. On-policy r ≡ 1, i.e. REINFORCE with a group baseline.
- ``clip_higher``: the same with ε_high = 0.28 (DAPO). The DAPO recipe's dynamic sampling is not included
  (spec: unspecified for the Lp-Reg paper).
- ``entropy``: PPO-clip minus ``entropy_coef`` × token-mean full-vocabulary entropy at T (with gradient).
- ``highent_8020``: PPO-clip on the top ``top_frac`` of valid tokens by detached entropy, count
  max(1, floor(top_frac·N)), token-mean over the survivors.
- ``gspo``: sequence-level ratio s_i = exp(mean_t log r), token ratio sg[s_i]·π_θ/sg[π_θ] (log clamped at ≤ 10),
  clip [1-ε_low, 1+ε_high] with the GSPO paper's 3e-4/4e-4, aggregated seq-mean-token-mean (``loss_agg``).
"""

from __future__ import annotations

import math

import torch

from lpreg.losses import LossInputs, aggregate, masked_mean, pg_metrics, ppo_clip, ratio, register_loss


def _ppo(inp: LossInputs, cfg, mask=None):
    mask = inp.response_mask if mask is None else mask
    loss_t, clipped = ppo_clip(ratio(inp.log_prob, inp.old_log_prob), inp.advantages, cfg["clip_low"],
                               cfg["clip_high"])  # [B, T]
    pg = aggregate(loss_t, mask, cfg.get("loss_agg", "token-mean"))
    return pg, masked_mean(clipped.to(loss_t.dtype), mask).detach()


@register_loss("none")
def grpo_loss(inp: LossInputs, cfg):
    """ℓ_t = max(-A r, -A clip(r, 1-ε_low, 1+ε_high)), token-mean."""
    pg, clipfrac = _ppo(inp, cfg)
    return pg, pg_metrics(pg, torch.zeros(()), clipfrac)


register_loss("clip_higher")(grpo_loss)


@register_loss("entropy", needs=lambda cfg: frozenset({"entropy"}))
def entropy_bonus_loss(inp: LossInputs, cfg):
    """L = PPO-clip − c · token-mean(H_t), H_t the full-vocabulary entropy at T (with gradient)."""
    pg, clipfrac = _ppo(inp, cfg)
    reg = -cfg["entropy_coef"] * aggregate(inp.entropy, inp.response_mask, cfg.get("loss_agg", "token-mean"))
    return pg + reg, pg_metrics(pg, reg, clipfrac)


@register_loss("highent_8020", needs=lambda cfg: frozenset({"entropy"}))
def highent_loss(inp: LossInputs, cfg):
    """PPO-clip on the top-``top_frac`` tokens by detached entropy only (Wang et al., "80/20")."""
    valid = inp.response_mask > 0
    n = int(valid.sum())
    keep = max(1, math.floor(cfg["top_frac"] * n))
    ent = inp.entropy.detach().masked_fill(~valid, -math.inf).flatten()
    top = torch.sort(-ent, stable=True).indices[:keep]
    mask = torch.zeros_like(ent)
    mask[top] = 1.0
    mask = mask.view_as(inp.response_mask) * inp.response_mask  # [B, T]
    pg, clipfrac = _ppo(inp, cfg, mask)
    metrics = pg_metrics(pg, torch.zeros(()), clipfrac)
    metrics["highent/kept"] = float(mask.sum())
    return pg, metrics


@register_loss("gspo")
def gspo_loss(inp: LossInputs, cfg):
    """GSPO: token ratio sg[s_i]·π_θ/sg[π_θ], s_i = exp(masked mean_t log r), PPO-clip, seq-mean-token-mean."""
    mask = inp.response_mask
    log_r = inp.log_prob - inp.old_log_prob  # [B, T]
    seq_log_r = (log_r * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # [B]
    tok_log_r = (seq_log_r.detach()[:, None] + inp.log_prob - inp.log_prob.detach()).clamp(max=10.0)  # [B, T]
    loss_t, clipped = ppo_clip(torch.exp(tok_log_r), inp.advantages, cfg["clip_low"], cfg["clip_high"])
    pg = aggregate(loss_t, mask, cfg.get("loss_agg", "seq-mean-token-mean"))
    return pg, pg_metrics(pg, torch.zeros(()), masked_mean(clipped.to(loss_t.dtype), mask))
