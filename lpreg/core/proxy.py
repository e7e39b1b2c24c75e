"""The Lp-Reg proxy π_proxy: a filtered, renormalized copy of a next-token distribution (the paper's Eq. 5), and the
filter as an ablation axis (``regularizer.proxy``).

With p = softmax(z) over the vocabulary, each filter keeps the survivors S and π_proxy = p·1[S] / Z, Z = Σ_{S} p.
``param`` is the one number of each filter (the Lp-Reg config field in brackets):

- ``minp`` (the paper's default, the reference) [``kappa``]: S = {v : p_v >= κ · max p}. The code keeps ties, the
  paper writes ``>``; we follow the code.
- ``fixed`` [``tau``]: S = {v : p_v >= τ}, an absolute threshold. If τ > max p nothing survives and π_proxy is uniform
  over the vocabulary (every logit at FILTERED).
- ``topp`` (nucleus, Holtzman et al. 2020) [``top_p``]: sort p descending; v survives if the mass of the tokens
  before it in that order is < p_top (the smallest prefix whose mass reaches p_top). Ties are ordered by the sort.
- ``topk`` [``top_k``]: S = {v : p_v >= the k-th largest p} (ties with the k-th kept, as min-p keeps them; k >= V
  keeps all).
- ``eta`` (the entropy-adaptive threshold of η-sampling, Hewitt et al. 2022, transformers' ``eta_cutoff``)
  [``eta_epsilon``]: S = {v : p_v >= η}, η = min(ε, √ε · exp(−H(p))), H the entropy in nats. A flat distribution
  (high H) gets a low threshold, a peaked one up to ε. For ε < 1 the argmax always survives:
  max p >= exp(−H) > √ε·exp(−H) >= η.

Filtered logits are set to ``FILTERED = -1e4`` (the reference's hard filter), so the proxy log-prob of a
filtered token is about -1e4. Everything is computed in fp32 (or the input's dtype if wider), without gradient,
row by row over the last axis: callers pass one chunk of logits ``[n, V]`` (``lpreg/native/tokens.py``) already divided by
the rollout temperature.
"""

from __future__ import annotations

import math

import torch

FILTERED = -1e4


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = probs.sort(-1, descending=True)  # [..., V]
    before = sorted_p.cumsum(-1) - sorted_p  # [..., V] mass of the tokens ahead in the sorted order
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before < top_p)


def _eta(probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    entropy = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1, keepdim=True)  # [..., 1]
    eta = torch.minimum(torch.full_like(entropy, epsilon), math.sqrt(epsilon) * torch.exp(-entropy))  # [..., 1]
    return probs >= eta


def _top_k(probs: torch.Tensor, k: float) -> torch.Tensor:
    k = min(int(k), probs.shape[-1])
    return probs >= probs.topk(k, -1).values[..., -1:]


# Each filter: its survivor rule on probabilities [..., V] and the Lp-Reg config field that holds its parameter.
FILTERS = {
    "minp": (lambda probs, kappa: probs >= kappa * probs.amax(-1, keepdim=True), "kappa"),
    "fixed": (lambda probs, tau: probs >= tau, "tau"),
    "topp": (_top_p, "top_p"),
    "topk": (_top_k, "top_k"),
    "eta": (_eta, "eta_epsilon"),
}
KINDS = tuple(FILTERS)  # regularizer.proxy


def survivors(logits: torch.Tensor, param: float, kind: str = "minp") -> torch.Tensor:
    """Boolean survivor mask ``[..., V]`` of the filter ``kind`` with its parameter ``param`` (module docstring)."""
    if kind not in FILTERS:
        raise ValueError(f"regularizer.proxy={kind!r} is not one of: {', '.join(KINDS)}")
    return FILTERS[kind][0](torch.softmax(_wide(logits), -1), param)


def filtered_logits(logits: torch.Tensor, param: float, kind: str = "minp") -> torch.Tensor:
    """Logits with filtered entries set to ``FILTERED``; their log_softmax is log π_proxy."""
    return _wide(logits).masked_fill(~survivors(logits, param, kind), FILTERED)


@torch.no_grad()
def proxy_log_prob(logits: torch.Tensor, tokens: torch.Tensor, param: float, kind: str = "minp") -> torch.Tensor:
    """log π_proxy(y) at the sampled tokens: logits ``[..., V]``, tokens ``[...]`` -> ``[...]``."""
    rows = filtered_logits(logits.detach(), param, kind)  # [..., V]
    return torch.log_softmax(rows, -1).gather(-1, tokens[..., None])[..., 0]


@torch.no_grad()
def proxy_support(logits: torch.Tensor, param: float, kind: str = "minp") -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy as a sparse list: survivor indices ``[n, K]`` and their proxy probabilities ``[n, K]`` for logits
    ``[n, V]``, K = the most survivors of any row (padding: index 0 with probability 0). K is at most
    ⌈1/(κ·max p)⌉ for ``minp``, k plus ties for ``topk``, up to V for the others."""
    probs = torch.softmax(_wide(logits.detach()), -1)  # [n, V]
    keep = survivors(logits, param, kind)  # [n, V]
    K = max(1, int(keep.sum(-1).max())) if len(keep) else 1
    q = (probs * keep).topk(K, -1)  # survivors first: every survivor has p > 0, every other entry 0
    z = q.values.sum(-1, keepdim=True)  # [n, 1] the surviving mass Z
    idx = torch.where(q.values > 0, q.indices, torch.zeros_like(q.indices))
    return idx, q.values / z


def proxy_distribution(logits: torch.Tensor, param: float, kind: str = "minp") -> torch.Tensor:
    """The full proxy distribution ``[..., V]`` (for the paper's forward-KL variant and for tests)."""
    return torch.softmax(filtered_logits(logits, param, kind), -1)


@torch.no_grad()
def tail_mass(logits: torch.Tensor, param: float, kind: str = "minp") -> torch.Tensor:
    """1 - Z: probability mass the filter removes at each position, ``[..., V] -> [...]``."""
    probs = torch.softmax(_wide(logits), -1)
    return (probs * (~survivors(logits, param, kind))).sum(-1)
