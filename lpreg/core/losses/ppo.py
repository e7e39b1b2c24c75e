"""GRPO / PPO-clip and the baselines built on it (the Lp-Reg paper's baselines).

- ``none``: PPO-clip GRPO, ε = 0.2/0.2. On-policy r ≡ 1, i.e. REINFORCE with a group baseline.
- ``clip_higher``: the same with ε_high = 0.28 (DAPO). The DAPO recipe's dynamic sampling is not included
  (spec: unspecified for the Lp-Reg paper).
- ``entropy``: PPO-clip minus ``entropy_coef`` × the aggregated full-vocabulary entropy at T (with gradient).
- ``highent_8020``: PPO-clip on the top ``top_frac`` of valid tokens by detached entropy, count
  max(1, floor(top_frac·N)), token-mean over the survivors. Selection is per micro-batch (the reference's); with
  several micro-batches each one's mean over its survivors is weighted by its share of the mini-batch's tokens.
- ``gspo``: sequence-level ratio s_i = exp(mean_t log r), token ratio sg[s_i]·π_θ/sg[π_θ] (log clamped at ≤ 10),
  clip [1-ε_low, 1+ε_high] with the GSPO paper's 3e-4/4e-4, aggregated seq-mean-token-mean (``loss_agg``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lpreg.checks import FRACTION, NON_NEGATIVE, choice, ranged
from lpreg.core.losses import (
    AGGREGATIONS,
    LossInputs,
    Norm,
    PPOClipConfig,
    aggregate,
    fraction_count,
    pg_metrics,
    ppo_clip,
    ratio,
    register,
    select_extreme,
    token_share,
)
from lpreg.core.metrics import token_entropy
from lpreg.core.reduce import Sum


def _ppo(inp: LossInputs, cfg: PPOClipConfig, mask=None, norm=None):
    mask, norm = (inp.response_mask, inp.norm) if mask is None else (mask, norm)
    loss_t, clipped = ppo_clip(ratio(inp.log_prob, inp.old_log_prob), inp.advantages, cfg.clip_low,
                               cfg.clip_high)  # [B, T]
    pg = aggregate(loss_t, mask, cfg.loss_agg, norm)
    return pg, token_share(clipped, mask)


@dataclass
class NoneConfig(PPOClipConfig):
    name: str = "none"


@register("none", NoneConfig, label="GRPO", color="#ff7f0e")
def grpo_loss(inp: LossInputs, cfg: PPOClipConfig):
    """ℓ_t = max(-A r, -A clip(r, 1-ε_low, 1+ε_high)), token-mean."""
    pg, clipfrac = _ppo(inp, cfg)
    return pg, pg_metrics(pg, torch.zeros(()), clipfrac)


@dataclass
class ClipHigherConfig(PPOClipConfig):
    name: str = "clip_higher"
    clip_high: float = ranged(0.28, NON_NEGATIVE)  # ε_high (Entropy-Mechanism 7b_cliphigher.sh; DAPO paper); ε_low stays 0.2


register("clip_higher", ClipHigherConfig, label="Clip-Higher", color="#d62728")(grpo_loss)


@dataclass
class EntropyConfig(PPOClipConfig):
    name: str = "entropy"
    entropy_coef: float = ranged(0.002, NON_NEGATIVE)  # paper §5.1.2


def entropy_target(cfg) -> dict:
    """The full-vocabulary entropy at T of the current policy, with its gradient (``inp.new["entropy"]``)."""
    return {"entropy": lambda logits, tokens, old: token_entropy(logits)}


@register("entropy", EntropyConfig, label="GRPO + entropy", color="#2ca02c", new_targets=entropy_target)
def entropy_bonus_loss(inp: LossInputs, cfg: EntropyConfig):
    """L = PPO-clip − c · aggregate(H_t), H_t the full-vocabulary entropy at T (with gradient)."""
    pg, clipfrac = _ppo(inp, cfg)
    reg = -cfg.entropy_coef * aggregate(inp.new["entropy"], inp.response_mask, cfg.loss_agg, inp.norm)
    return pg + reg, pg_metrics(pg, reg, clipfrac)


@dataclass
class HighEntConfig(PPOClipConfig):
    name: str = "highent_8020"
    top_frac: float = ranged(0.2, FRACTION)  # keep the top 20% of tokens by entropy (Wang et al.)
    # clip: Wang et al. pair 80/20 with clip-higher 0.28; unspecified in the Lp-Reg paper, we keep 0.2/0.2


def highent_selection(inp: LossInputs, cfg: HighEntConfig) -> torch.Tensor:
    """The top-``top_frac`` tokens by detached entropy ``[B, T]`` (the only ones that get a gradient)."""
    valid = inp.response_mask > 0
    return select_extreme(inp.new["entropy"], valid, fraction_count(cfg.top_frac, int(valid.sum())), largest=True)


@register("highent_8020", HighEntConfig, label="80/20", color="#e377c2", new_targets=entropy_target,
          acts_on=highent_selection)
def highent_loss(inp: LossInputs, cfg: HighEntConfig):
    """PPO-clip on the top-``top_frac`` tokens by detached entropy only (Wang et al., "80/20")."""
    valid = inp.response_mask > 0
    keep = highent_selection(inp, cfg)
    mask = keep.to(inp.response_mask.dtype) * inp.response_mask  # [B, T]
    n, here = inp.counts(), float(valid.sum())  # this micro-batch's survivors stand for its share of the tokens
    kept = float(mask.sum()) * n.tokens / here if here else 1.0
    pg, clipfrac = _ppo(inp, cfg, mask, Norm(kept, n.seqs, n.rows))
    metrics = pg_metrics(pg, torch.zeros(()), clipfrac)
    metrics["highent/kept"] = Sum(float(mask.sum()))
    return pg, metrics


@dataclass
class GSPOConfig(PPOClipConfig):
    name: str = "gspo"
    clip_low: float = ranged(3e-4, NON_NEGATIVE)  # GSPO paper ε_low (must override verl's 0.2)
    clip_high: float = ranged(4e-4, NON_NEGATIVE)  # GSPO paper ε_high
    loss_agg: str = choice("seq-mean-token-mean", AGGREGATIONS)  # forced by the reference for GSPO


@register("gspo", GSPOConfig, label="GSPO", color="#7f7f7f")
def gspo_loss(inp: LossInputs, cfg: GSPOConfig):
    """GSPO: token ratio sg[s_i]·π_θ/sg[π_θ], s_i = exp(masked mean_t log r), PPO-clip, seq-mean-token-mean."""
    mask = inp.response_mask
    log_r = inp.log_prob - inp.old_log_prob  # [B, T]
    seq_log_r = (log_r * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # [B]
    tok_log_r = (seq_log_r.detach()[:, None] + inp.log_prob - inp.log_prob.detach()).clamp(max=10.0)  # [B, T]
    loss_t, clipped = ppo_clip(torch.exp(tok_log_r), inp.advantages, cfg.clip_low, cfg.clip_high)
    pg = aggregate(loss_t, mask, cfg.loss_agg, inp.norm)
    return pg, pg_metrics(pg, torch.zeros(()), token_share(clipped, mask))
