"""Lp-Reg: low-probability regularization toward a min-p proxy (arXiv:2510.03222), with the semantics of
the reference code (``CarlanLark/Lp-Reg-dev``; where it departs from the paper's text, the code is followed).
The filter that builds the proxy is an ablation axis, ``proxy: minp | fixed | topp | topk | eta`` (``lpreg/core/proxy.py``);
``minp`` is the paper's.

Per token (to be minimized), with r = π_θ(y)/π_old(y) and ρ_p = π_proxy(y)/π_θ(y):

    ℓ_t = −A_t r_t + β · D_t                               if t ∈ Reg
    ℓ_t = max(−A_t r_t, −A_t clip(r_t, 1−ε_low, 1+ε_high))   otherwise (ε = 1.0/9.0: ratio range [0, 10])

    D_t = clamp(ρ_p − log ρ_p − 1, −10, 10)        (``divergence: k3``, the reference code; default)
    D_t = KL(π_proxy(·|s_t) ‖ π_θ(·|s_t))           (``divergence: forward_kl``, the paper's Eq. 6)

Reg: among the negative-advantage tokens N of the loss call (one mini-batch), k = max(1, floor(ρ|N|)); only if
k > 1, the k tokens with the smallest current π_θ(y) (ties: lower flat index first); of those, keep a token only
if π_θ(y) < π_proxy(y) strictly (drops filtered "noise", whose proxy is ~e^-1e4). Aggregation: ``loss_agg``
(token-mean, the reference's).

Switches beyond the reference (each off by default):
- ``scope: batch``: the candidates are the negative tokens with π_θ(y) <= δ, where δ (a rollout target) is fixed
  per rollout as the k-th smallest π_old(y) over all negative tokens of the rollout (same k rule). On-policy it
  equals ``micro_batch`` selection over the whole rollout; it makes selection independent of how the rollout is cut
  into mini-batches, micro-batches and ranks.
- ``rho_pos > 0``: the same selection and regularizer on positive-advantage tokens (the reference's
  ``logp_pos_k_percent``).
- ``divergence: forward_kl``: Reg tokens get the full-vocabulary KL(π_proxy‖π_θ) instead of k3; the selection and
  the unclipped −A r stay as in the code. The proxy is stored sparsely: π_old's min-p survivors as (index,
  probability) pairs, padded to the most survivors of a token in its chunk (at most ⌈1/(κ·p_max)⌉ per token, so
  ⌈1/κ⌉ where π_old is confident; a flat distribution keeps more), and log π_θ is gathered at those indices.

Targets (``lpreg/core/losses/__init__.py``): ``proxy_log_prob`` from π_old's logits (the reference's no-grad pass: on-policy
the same forward as the old log-probs, no extra pass); for ``forward_kl`` also ``proxy_idx``/``proxy_q`` and, from
the current logits, ``proxy_logp``; for ``scope: batch`` the rollout value ``delta_log_prob``.
Which tokens compete in the selection: ``scope: micro_batch`` selects per micro-batch, as the reference does per GPU
micro-batch, so it depends on ``trainer.max_tokens_per_micro_batch`` (0 = one micro-batch per mini-batch: selection
per mini-batch) and on the number of ranks; ``scope: batch`` does not. Numerics: D_t is computed only at Reg tokens
and the log-ratio is clamped before ``exp``, so filtered tokens (proxy ≈ −1e4) cannot produce NaN gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lpreg.checks import AT_LEAST_1, FRACTION, NON_NEGATIVE, OPEN_UNIT, PROBABILITY, Range, choice, embedded, ranged
from lpreg.core.losses import (
    LossInputs,
    PPOClipConfig,
    aggregate,
    fraction_count,
    k3,
    pg_metrics,
    ppo_clip,
    ratio,
    register,
    select_extreme,
    token_share,
)
from lpreg.core.proxy import FILTERS, KINDS, proxy_distribution, proxy_log_prob, proxy_support
from lpreg.core.reduce import Max, Mean, Sum

SCOPES = ("micro_batch", "batch")  # which tokens compete in the selection (module docstring)
DIVERGENCES = ("k3", "forward_kl")


@dataclass
class LpRegConfig(PPOClipConfig):
    name: str = "lpreg"
    # The proxy's filter (lpreg/core/proxy.py, formulas there): minp (the paper's, the reference) | fixed | topp | topk |
    # eta (entropy-adaptive). Each reads only its own parameter below.
    proxy: str = choice("minp", KINDS)
    kappa: float = ranged(0.02, OPEN_UNIT)  # minp: κ relative to the max probability (recipe minp_p_threshold=0.02)
    tau: float = ranged(0.02, OPEN_UNIT)  # fixed: absolute τ (recipe regular_type=fixed)
    top_p: float = ranged(0.95, Range(0, 1, lo_open=True))  # topp: nucleus mass (Qwen3's recommended TopP=0.95)
    top_k: int = ranged(20, AT_LEAST_1)  # topk: (Qwen3's recommended sampling TopK=20)
    eta_epsilon: float = ranged(3e-4, OPEN_UNIT)  # eta: ε of η-sampling (transformers eta_cutoff: "3e-4 to 2e-3")
    # ρ: fraction of negative-advantage tokens selected, k = max(1, floor(ρ·|N|)), and only when k > 1.
    # Paper/recipe: 0.01 (Qwen3-14B) or 0.005 (Qwen2.5-32B), with ~10^5-10^6 negative tokens per micro-batch.
    # An embedded mini-batch (128 responses, ~450 response tokens, ~170 negative) gets k = floor(0.01·|N|) <= 1
    # at 0.01, i.e. no regularization at all. Measured at 0.05 on the embedded default: 3.5-13.5 candidates
    # (mean 8.4) and 2-10.5 regularized tokens (mean 5.4) per mini-batch. Use 0.01 at real scale.
    rho: float = embedded(0.05, "0.01 (Qwen3-14B) / 0.005 (Qwen2.5-32B)", FRACTION)
    beta: float = ranged(1.0, NON_NEGATIVE)  # ppo_kl_coef
    clip_low: float = ranged(1.0, NON_NEGATIVE)  # ratio range [0, 10] (recipe clip_ratio_low=1.0)
    clip_high: float = ranged(9.0, NON_NEGATIVE)  # (recipe clip_ratio_high=9.0)
    scope: str = choice("micro_batch", SCOPES)  # micro_batch: the reference's; batch: δ fixed over the rollout
    rho_pos: float = ranged(0.0, PROBABILITY)  # also regularize positive tokens (recipe logp_pos_k_percent=0: off)
    divergence: str = choice("k3", DIVERGENCES)  # k3: the reference code's; forward_kl: the paper's Eq. 6


def proxy_param(cfg: LpRegConfig) -> float:
    """The parameter of the configured proxy filter (``lpreg.core.proxy.FILTERS`` names its field)."""
    return getattr(cfg, FILTERS[cfg.proxy][1])


def old_targets(cfg: LpRegConfig) -> dict:
    param, kind = proxy_param(cfg), cfg.proxy
    out = {"proxy_log_prob": lambda logits, tokens, old: proxy_log_prob(logits, tokens, param, kind)}
    if cfg.divergence == "forward_kl":
        out["proxy_idx"] = lambda logits, tokens, old: proxy_support(logits, param, kind)[0]
        out["proxy_q"] = lambda logits, tokens, old: proxy_support(logits, param, kind)[1]
    return out


def new_targets(cfg: LpRegConfig) -> dict:
    if cfg.divergence != "forward_kl":
        return {}
    return {"proxy_logp": lambda logits, tokens, old: torch.log_softmax(logits, -1).gather(-1, old["proxy_idx"])}


def rollout_targets(cfg: LpRegConfig, old_log_prob: torch.Tensor, adv: torch.Tensor) -> dict:
    """δ for ``scope: batch``: the k-th smallest log π_old(y) over the rollout's negative tokens (−inf if k <= 1)."""
    if cfg.scope != "batch":
        return {}
    pool = adv < 0
    k = fraction_count(cfg.rho, int(pool.sum()))
    delta = -math.inf if k <= 1 else old_log_prob[pool].sort().values[k - 1].item()
    return {"delta_log_prob": delta}


def forward_kl(logits: torch.Tensor, old_logits: torch.Tensor, param: float, kind: str) -> torch.Tensor:
    """KL(π_proxy ‖ π_θ) per row from dense logits (current with grad, π_old's) ``[N, V]`` -> ``[N]``: the
    reference formula the sparse form (``sparse_forward_kl``) is tested against."""
    proxy = proxy_distribution(old_logits.detach(), param, kind).to(logits.dtype)  # [N, V]
    log_p = torch.log_softmax(logits, -1)  # [N, V]
    log_q = torch.log(proxy.clamp_min(torch.finfo(proxy.dtype).tiny))
    return (proxy * (log_q - log_p)).sum(-1)


def sparse_forward_kl(q: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(π_proxy ‖ π_θ) = Σ_k q_k (log q_k − log π_θ(o_k)) over π_old's survivors: ``[N, K]`` -> ``[N]``
    (padding entries have q = 0 and add nothing)."""
    log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
    return torch.where(q > 0, q * (log_q - logp), torch.zeros_like(q)).sum(-1)


def _candidates(lp: torch.Tensor, pool: torch.Tensor, rho: float, delta: float | None) -> torch.Tensor:
    """Selected low-probability tokens among ``pool`` ``[B, T]``."""
    if delta is not None:  # scope: batch, δ fixed over the rollout
        return pool & (lp <= delta)
    k = fraction_count(rho, int(pool.sum()))
    if k <= 1:
        return torch.zeros_like(pool)
    return select_extreme(lp, pool, k)


def selection(inp: LossInputs, cfg: LpRegConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(candidates, regularized)`` ``[B, T]``: the low-probability tokens selected, and those of them with
    π_θ(y) < π_proxy(y) (strict: filtered noise never passes). The loss and the token records both call this."""
    valid, adv, lp = inp.response_mask > 0, inp.advantages, inp.log_prob.detach()
    delta = inp.rollout["delta_log_prob"] if cfg.scope == "batch" else None
    cand = _candidates(lp, valid & (adv < 0), cfg.rho, delta)
    if cfg.rho_pos > 0:
        cand = cand | _candidates(lp, valid & (adv > 0), cfg.rho_pos, None)
    return cand, cand & (lp < inp.old["proxy_log_prob"])


@register("lpreg", LpRegConfig, label="Lp-Reg", color="#1f77b4", old_targets=old_targets, new_targets=new_targets,
          rollout_targets=rollout_targets, acts_on=lambda inp, cfg: selection(inp, cfg)[1])
def lpreg_loss(inp: LossInputs, cfg: LpRegConfig):
    """Lp-Reg loss (module docstring): PPO [0, 10] everywhere, −A r + β·D on the regularized tokens."""
    mask, adv = inp.response_mask, inp.advantages
    lp = inp.log_prob.detach()  # [B, T]
    r = ratio(inp.log_prob, inp.old_log_prob)  # [B, T]
    pg_t, clipped = ppo_clip(r, adv, cfg.clip_low, cfg.clip_high)  # [B, T]
    proxy = inp.old["proxy_log_prob"]  # [B, T]
    cand, reg = selection(inp, cfg)

    log_rho = proxy[reg] - inp.log_prob[reg]  # [n_reg], only at regularized tokens
    if cfg.divergence == "forward_kl":
        div = sparse_forward_kl(inp.old["proxy_q"][reg], inp.new["proxy_logp"][reg])
    else:
        div = k3(log_rho)
    pg_t = torch.where(reg, -adv * r, pg_t)  # unclipped on regularized tokens
    reg_t = torch.zeros_like(pg_t).masked_scatter(reg, cfg.beta * div)  # [B, T]
    pg, reg_loss = aggregate(pg_t, mask, cfg.loss_agg, inp.norm), aggregate(reg_t, mask, cfg.loss_agg, inp.norm)

    n_cand, n_reg = int(cand.sum()), int(reg.sum())
    metrics = pg_metrics(pg, reg_loss, token_share(clipped & ~reg, mask))
    metrics.update({
        "lpreg/candidates": Sum(float(n_cand)),
        "lpreg/regularized": Sum(float(n_reg)),
        "lpreg/reg_ratio": Mean(float(n_reg), float(n_cand)),
        "lpreg/delta": Max(lp[cand].max().exp().item() if n_cand else math.nan),
        "lpreg/div_mean": Mean(div.detach().sum().item(), float(n_reg)),
        "lpreg/proxy_ratio_mean": Mean(log_rho.detach().clamp(max=20).exp().sum().item(), float(n_reg)),
        "lpreg/noise_frac": Mean(float((cand & (proxy < -1e3)).sum()), float(n_cand)),
    })
    return pg + reg_loss, metrics

