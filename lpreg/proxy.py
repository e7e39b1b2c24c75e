"""The Lp-Reg proxy π_proxy: a min-p filtered, renormalized copy of a next-token distribution (spec §1.2).

- ``mode="minp"`` (the paper's default): survivors are tokens with ``p >= kappa * max p`` (code keeps ties, the
  paper writes ``>``; we follow the code).
- ``mode="fixed"``: survivors are tokens with ``p >= kappa`` (``kappa`` read as an absolute τ).

Filtered logits are set to ``FILTERED = -1e4`` (the reference's hard filter), so the proxy log-prob of a
filtered token is about -1e4. Everything is computed in fp32 (or the input's dtype if wider), without gradient,
in row chunks, and only the value at the sampled token is kept. Callers pass logits already divided by the
rollout temperature.
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
def proxy_log_prob(logits: torch.Tensor, tokens: torch.Tensor, kappa: float, mode: str = "minp",
                   chunk: int = 4096) -> torch.Tensor:
    """log π_proxy(y) at the sampled tokens: logits ``[B, T, V]``, tokens ``[B, T]`` -> ``[B, T]``."""
    B, T, V = logits.shape
    flat, ids = logits.detach().reshape(B * T, V), tokens.reshape(B * T, 1)
    out = torch.empty(B * T, dtype=_wide(flat[:1]).dtype, device=logits.device)
    for s in range(0, B * T, chunk):
        rows = filtered_logits(flat[s : s + chunk], kappa, mode)  # [c, V]
        out[s : s + chunk] = torch.log_softmax(rows, -1).gather(-1, ids[s : s + chunk])[:, 0]
    return out.view(B, T)


def proxy_distribution(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """The full proxy distribution ``[..., V]`` (for the paper's forward-KL variant and for tests)."""
    return torch.softmax(filtered_logits(logits, kappa, mode), -1)


@torch.no_grad()
def tail_mass(logits: torch.Tensor, kappa: float, mode: str = "minp") -> torch.Tensor:
    """1 - Z: probability mass the filter removes at each position, ``[..., V] -> [...]``."""
    probs = torch.softmax(_wide(logits), -1)
    return (probs * (~survivors(logits, kappa, mode))).sum(-1)
