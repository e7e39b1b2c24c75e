"""The Lp-Reg proxy π_proxy: a min-p filtered, renormalized copy of a next-token distribution (spec §1.2).

- ``mode="minp"`` (the paper's default): survivors are tokens with ``p >= kappa * max p`` (code keeps ties, the
  paper writes ``>``; we follow the code).
- ``mode="fixed"``: survivors are tokens with ``p >= kappa`` (``kappa`` read as an absolute τ).

Filtered logits are set to ``FILTERED = -1e4`` (the reference's hard filter), so the proxy log-prob of a
filtered token is about -1e4. Everything is computed in fp32 (or the input's dtype if wider), without gradient;
callers pass one chunk of logits (``lpreg/tokens.py``) already divided by the rollout temperature.
"""

from __future__ import annotations

import torch

FILTERED = -1e4


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def survivors(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """Boolean survivor mask ``[..., V]`` of the min-p (or fixed-τ) filter."""
    probs = torch.softmax(_wide(logits), -1)  # [..., V]
    if mode == "minp":
        tau = kappa * probs.amax(-1, keepdim=True)  # [..., 1]
    elif mode == "fixed":
        tau = torch.full_like(probs[..., :1], kappa)
    else:
        raise ValueError(f"proxy mode {mode!r} is not one of: minp, fixed")
    return probs >= tau


def filtered_logits(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """Logits with filtered entries set to ``FILTERED``; their log_softmax is log π_proxy."""
    return _wide(logits).masked_fill(~survivors(logits, kappa, mode), FILTERED)


@torch.no_grad()
def proxy_log_prob(logits: torch.Tensor, tokens: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """log π_proxy(y) at the sampled tokens: logits ``[..., V]``, tokens ``[...]`` -> ``[...]``."""
    rows = filtered_logits(logits.detach(), kappa, mode)  # [..., V]
    return torch.log_softmax(rows, -1).gather(-1, tokens[..., None])[..., 0]


@torch.no_grad()
def proxy_support(logits: torch.Tensor, kappa: float, mode: str = "minp") -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy as a sparse list: survivor indices ``[n, K]`` and their proxy probabilities ``[n, K]`` for logits
    ``[n, V]``, K = the most survivors of any row (padding: index 0 with probability 0)."""
    probs = torch.softmax(_wide(logits.detach()), -1)  # [n, V]
    keep = survivors(logits, kappa, mode)  # [n, V]
    K = max(1, int(keep.sum(-1).max())) if len(keep) else 1
    q = (probs * keep).topk(K, -1)  # survivors first: every survivor has p > 0, every other entry 0
    z = q.values.sum(-1, keepdim=True)  # [n, 1] the surviving mass Z
    idx = torch.where(q.values > 0, q.indices, torch.zeros_like(q.indices))
    return idx, q.values / z


def proxy_distribution(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """The full proxy distribution ``[..., V]`` (for the paper's forward-KL variant and for tests)."""
    return torch.softmax(filtered_logits(logits, kappa, mode), -1)


@torch.no_grad()
def tail_mass(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """1 - Z: probability mass the filter removes at each position, ``[..., V] -> [...]``."""
    probs = torch.softmax(_wide(logits), -1)
    return (probs * (~survivors(logits, kappa, mode))).sum(-1)
