"""Lp-Reg: low-probability regularization toward a min-p proxy (arXiv:2510.03222; spec §1.4, code semantics).

Per token (to be minimized), with r = π_θ(y)/π_old(y) and ρ_p = π_proxy(y)/π_θ(y):

    ℓ_t = −A_t r_t + β · D_t                               if t ∈ Reg
    ℓ_t = max(−A_t r_t, −A_t clip(r_t, 1−ε_low, 1+ε_high))   otherwise (ε = 1.0/9.0: ratio range [0, 10])

    D_t = clamp(ρ_p − log ρ_p − 1, −10, 10)        (``divergence: k3``, the reference code; default)
    D_t = KL(π_proxy(·|s_t) ‖ π_θ(·|s_t))           (``divergence: forward_kl``, the paper's Eq. 6)

Reg: among the negative-advantage tokens N of the loss call (one mini-batch), k = max(1, floor(ρ|N|)); only if
k > 1, the k tokens with the smallest current π_θ(y) (ties: lower flat index first); of those, keep a token only
if π_θ(y) < π_proxy(y) strictly (drops filtered "noise", whose proxy is ~e^-1e4). Aggregation: token-mean.

Switches beyond the reference (each off by default):
- ``scope: batch``: the candidates are the negative tokens with π_θ(y) <= δ, where δ (``LossInputs.lowprob_threshold``)
  is fixed per rollout by the trainer as the k-th smallest π_old(y) over all negative tokens of the rollout
  (same k rule). On-policy it equals ``minibatch`` over the whole rollout; it makes selection independent of
  how the rollout is cut into mini-batches.
- ``rho_pos > 0``: the same selection and regularizer on positive-advantage tokens (the reference's
  ``logp_pos_k_percent``).
- ``divergence: forward_kl``: Reg tokens get the full-vocabulary KL(π_proxy‖π_θ) built from π_old's logits
  instead of k3; the selection and the unclipped −A r stay as in the code.
Departures from the reference: our mini-batch is a single micro-batch, so "per micro-batch" selection is per
mini-batch. Numerics: D_t is computed only at Reg tokens and the log-ratio is clamped before ``exp``, so
filtered tokens (proxy ≈ −1e4) cannot produce NaN gradients.
"""

from __future__ import annotations

import math

import torch

from lpreg.losses import LossInputs, k3, masked_mean, pg_metrics, ppo_clip, ratio, register_loss, select_lowest
from lpreg.proxy import proxy_distribution


def _needs(cfg) -> frozenset[str]:
    needs = {"proxy"}
    if cfg.get("divergence", "k3") == "forward_kl":
        needs |= {"logits", "old_logits"}
    if cfg.get("scope", "minibatch") == "batch":
        needs.add("lowprob_threshold")
    return frozenset(needs)


def selection_count(n: int, rho: float) -> int:
    """k = max(1, floor(ρ·n)); selection happens only when k > 1 (spec §1.4 step 4)."""
    return max(1, math.floor(rho * n))


def forward_kl(logits: torch.Tensor, old_logits: torch.Tensor, kappa: float, mode: str) -> torch.Tensor:
    """KL(π_proxy ‖ π_θ) per row: ``logits`` (current, with grad) and ``old_logits`` ``[N, V]`` -> ``[N]``."""
    proxy = proxy_distribution(old_logits.detach(), kappa, mode).to(logits.dtype)  # [N, V]
    log_p = torch.log_softmax(logits, -1)  # [N, V]
    log_q = torch.log(proxy.clamp_min(torch.finfo(proxy.dtype).tiny))
    return (proxy * (log_q - log_p)).sum(-1)


def _candidates(lp: torch.Tensor, pool: torch.Tensor, rho: float, threshold: float | None) -> torch.Tensor:
    """Selected low-probability tokens among ``pool`` ``[B, T]``."""
    if threshold is not None:  # scope: batch, δ fixed over the rollout
        return pool & (lp <= threshold)
    k = selection_count(int(pool.sum()), rho)
    if k <= 1:
        return torch.zeros_like(pool)
    return select_lowest(lp, pool, k)


@register_loss("lpreg", needs=_needs)
def lpreg_loss(inp: LossInputs, cfg):
    """Lp-Reg loss (module docstring): PPO [0, 10] everywhere, −A r + β·D on the regularized tokens."""
    mask, adv = inp.response_mask, inp.advantages
    valid = mask > 0
    lp = inp.log_prob.detach()  # [B, T]
    r = ratio(inp.log_prob, inp.old_log_prob)  # [B, T]
    pg_t, clipped = ppo_clip(r, adv, cfg["clip_low"], cfg["clip_high"])  # [B, T]

    threshold = inp.lowprob_threshold if cfg.get("scope", "minibatch") == "batch" else None
    cand = _candidates(lp, valid & (adv < 0), cfg["rho"], threshold)
    if cfg.get("rho_pos", 0.0) > 0:
        cand = cand | _candidates(lp, valid & (adv > 0), cfg["rho_pos"], None)
    reg = cand & (lp < inp.proxy_log_prob)  # [B, T] strict: filtered noise never passes

    log_rho = inp.proxy_log_prob[reg] - inp.log_prob[reg]  # [n_reg], only at regularized tokens
    if cfg.get("divergence", "k3") == "forward_kl":
        div = forward_kl(inp.logits[reg], inp.old_logits[reg], cfg["kappa"], cfg.get("mode", "minp"))
    else:
        div = k3(log_rho)
    pg_t = torch.where(reg, -adv * r, pg_t)  # unclipped on regularized tokens
    reg_t = torch.zeros_like(pg_t).masked_scatter(reg, cfg["beta"] * div)  # [B, T]
    pg, reg_loss = masked_mean(pg_t, mask), masked_mean(reg_t, mask)

    n_cand, n_reg = int(cand.sum()), int(reg.sum())
    metrics = pg_metrics(pg, reg_loss, masked_mean((clipped & ~reg).to(pg_t.dtype), mask))
    metrics.update({
        "lpreg/candidates": float(n_cand),
        "lpreg/regularized": float(n_reg),
        "lpreg/reg_ratio": n_reg / n_cand if n_cand else math.nan,
        "lpreg/delta": lp[cand].max().exp().item() if n_cand else math.nan,
        "lpreg/div_mean": div.mean().item() if n_reg else math.nan,
        "lpreg/proxy_ratio_mean": log_rho.detach().clamp(max=20).exp().mean().item() if n_reg else math.nan,
        "lpreg/noise_frac": float((cand & (inp.proxy_log_prob < -1e3)).sum()) / n_cand if n_cand else math.nan,
    })
    return pg + reg_loss, metrics


def rollout_threshold(old_log_prob: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, cfg) -> float:
    """δ for ``scope: batch``: the k-th smallest log π_old(y) over the rollout's negative tokens (−inf if k <= 1)."""
    pool = (mask > 0) & (adv < 0)
    k = selection_count(int(pool.sum()), cfg["rho"])
    if k <= 1:
        return -math.inf
    return old_log_prob[pool].sort().values[k - 1].item()
