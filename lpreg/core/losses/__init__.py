"""Policy losses and the regularizer registry: one entry per ``regularizer=`` option.

A regularizer is one registry entry (``Regularizer``): its typed config schema (a dataclass whose defaults are the
option's values, each with its provenance), its loss (a pure function ``(LossInputs, cfg) -> (loss, metrics)``),
the per-token targets it needs, and its display label and color (figures read them from here).
``lpreg/harness/config.py`` registers every entry as a Hydra option of the ``regularizer`` group, so the entry is the only
place a regularizer is named; the trainer calls what the entry declares and reads none of its fields.

Targets a regularizer declares (each a function of its config returning ``{name: fn}``):
- ``old_targets``: ``fn(logits, tokens, old) -> [n, ...]`` on π_old's logits chunk in the no-grad pass (e.g.
  Lp-Reg's log π_proxy(y)); the loss reads them as ``inp.old[name]`` (``[b, R, ...]``, detached).
- ``new_targets``: the same on the current logits chunk, with gradient (recomputed in backward); ``old`` holds the
  chunk's old targets (e.g. the sparse forward KL gathers log π_θ at π_old's survivors); read as ``inp.new[name]``.
- ``rollout_targets``: ``fn(cfg, old_log_prob [N], advantages [N]) -> {name: value}`` once per rollout over all of
  its response tokens (e.g. Lp-Reg's δ for ``scope: batch``); read as ``inp.rollout[name]``.
To add a regularizer with a new per-token target, write its schema, loss and target functions in its own module
and import that module at the end of this file (``tests/test_token_path.py`` defines one inside the test).

Aggregation is exact over the mini-batch whatever the micro-batching: ``LossInputs.norm`` holds the mini-batch's
token, sequence and row counts, so a micro-batch's loss is its share of the mini-batch loss and the micro-batch
losses add up (verl's ``agg_loss`` with the global token count). Every loss returns a 0-d tensor and a dict of floats
holding at least ``loss/pg``, ``loss/reg`` (their sum is the loss) and ``policy/clipfrac``; each value says how it
combines over the micro-batches of one update (``lpreg/core/reduce.py``: ``Sum``, ``Mean``, ``Max``). Shapes: ``[B, T]`` =
responses × response positions, ``V`` = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lpreg.checks import NON_NEGATIVE, choice, ranged
from lpreg.core.reduce import Mean, Reducible, Sum
from lpreg.registry import Registry

LOG_RATIO_CLAMP = 20.0  # |log r| is clamped before exp (as verl does) so a ratio can never overflow


@dataclass(frozen=True)
class Norm:
    """Counts of the whole mini-batch (all its micro-batches, all ranks) that aggregation divides by."""

    tokens: float  # response tokens
    seqs: float  # sequences with at least one response token
    rows: float  # sequences


@dataclass(frozen=True)
class LossInputs:
    log_prob: torch.Tensor  # [B, T] log π_θ(y), with gradient
    old_log_prob: torch.Tensor  # [B, T] log π_old(y)
    advantages: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] 1 for response tokens, 0 for padding
    old: dict[str, torch.Tensor] = field(default_factory=dict)  # declared π_old targets, [B, T, ...], detached
    new: dict[str, torch.Tensor] = field(default_factory=dict)  # declared current targets, [B, T, ...], with grad
    rollout: dict[str, Any] = field(default_factory=dict)  # declared per-rollout values
    norm: Norm | None = None  # mini-batch counts; None = this call is the whole mini-batch

    def counts(self) -> Norm:
        if self.norm is not None:
            return self.norm
        m = self.response_mask
        return Norm(float(m.sum()), float((m.sum(-1) > 0).sum()), float(m.shape[0]))


LossFn = Callable[[LossInputs, Any], tuple[torch.Tensor, dict[str, Reducible]]]


def _token_mean(x: torch.Tensor, mask: torch.Tensor, n: Norm) -> torch.Tensor:
    return (x * mask).sum() / (n.tokens + 1e-8)


def _seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor, n: Norm) -> torch.Tensor:
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # [B]
    has = (mask.sum(-1) > 0).to(x.dtype)  # [B]
    return (per_seq * has).sum() / max(n.seqs, 1.0)


def _seq_mean_token_sum(x: torch.Tensor, mask: torch.Tensor, n: Norm) -> torch.Tensor:
    return (x * mask).sum() / max(n.rows, 1.0)


AGGREGATIONS = {"token-mean": _token_mean, "seq-mean-token-mean": _seq_mean_token_mean,
                "seq-mean-token-sum": _seq_mean_token_sum}



@dataclass
class RegularizerConfig:
    """Fields every regularizer has. ``name`` is the option name; ``loss_agg`` how per-token losses are reduced."""

    name: str
    loss_agg: str = choice("token-mean", AGGREGATIONS)  # verl's loss_agg_mode names


@dataclass
class PPOClipConfig(RegularizerConfig):
    clip_low: float = ranged(0.2, NON_NEGATIVE)  # ε_low (verl default; Entropy-Mechanism 7b_baseline.sh)
    clip_high: float = ranged(0.2, NON_NEGATIVE)  # ε_high (same)


NO_TARGETS: Callable[[Any], dict] = lambda cfg: {}


@dataclass(frozen=True)
class Regularizer:
    name: str
    config: type  # the typed config schema: a dataclass whose defaults are the option's values
    loss: LossFn
    label: str  # display name in figures and tables
    color: str  # line color in figures
    old_targets: Callable[[Any], dict] = NO_TARGETS  # cfg -> {name: TokenFn} on π_old's logits, no grad
    new_targets: Callable[[Any], dict] = NO_TARGETS  # cfg -> {name: TokenFn} on the current logits, with grad
    rollout_targets: Callable[..., dict] = lambda cfg, old_log_prob, adv: {}  # once per rollout
    # (LossInputs, cfg) -> bool [B, T]: the tokens the regularizer acts on (its own selection, the same function
    # its loss uses); None for regularizers that act on every token alike
    acts_on: Callable[[LossInputs, Any], torch.Tensor] | None = None
    control: bool = False  # a positive control of a testbed (it uses what a method cannot know), not a method


REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


def register(name: str, config: type, label: str, color: str, **declared) -> Callable[[LossFn], LossFn]:
    """Decorator: register ``fn`` as the loss of regularizer ``name`` with its schema, label, color, and what else it
    declares (targets, ``acts_on``, ``control``)."""

    def deco(fn: LossFn) -> LossFn:
        REGULARIZERS.register(name)(Regularizer(name, config, fn, label, color, **declared))
        return fn

    return deco


# ---- shared pieces ----------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Σ m·x / (Σ m + eps): the reference's token-mean over one tensor (metrics)."""
    return (x * mask).sum() / (mask.sum() + eps)


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, norm: Norm | None = None) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar: token-mean, seq-mean-token-mean or seq-mean-token-sum.

    ``norm`` holds the mini-batch's counts when this tensor is one micro-batch of it (the result is then its share
    of the mini-batch value); None = the tensor is the whole mini-batch.
    """
    if mode not in AGGREGATIONS:  # the config refuses it; a direct caller gets the list too
        raise KeyError(f"unknown loss aggregation {mode!r} (regularizer.loss_agg); valid: {', '.join(AGGREGATIONS)}")
    if norm is None:
        norm = Norm(float(mask.sum()), float((mask.sum(-1) > 0).sum()), float(mask.shape[0]))
    return AGGREGATIONS[mode](x, mask, norm)


def ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """r = exp(log π_θ - log π_old), log-ratio clamped to ±20."""
    return torch.exp((log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def ppo_clip(r: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float):
    """PPO max-form ℓ = max(-A r, -A clip(r, 1-ε_low, 1+ε_high)); returns (ℓ, clipped) both ``[B, T]``."""
    unclipped = -adv * r
    clipped = -adv * r.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def k3(log_ratio: torch.Tensor, bound: float = 10.0) -> torch.Tensor:
    """Clamped k3 estimator: clamp(ρ - log ρ - 1, -bound, bound) with log ρ = ``log_ratio``.

    The log-ratio is clamped at 20 before ``exp`` so that the value never overflows; beyond ρ* = 13.61 k3 is
    already clamped at 10 and its gradient is 0, so the extra clamp changes neither value nor gradient.
    """
    lr = log_ratio.clamp(max=LOG_RATIO_CLAMP)
    return (torch.exp(lr) - lr - 1).clamp(-bound, bound)


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mask: torch.Tensor) -> Mean:
    """k3 estimate of KL(π_θ‖π_old) on sampled tokens (``policy/approx_kl``), a mean over the masked tokens."""
    kl = k3(old_log_prob.detach() - log_prob.detach(), bound=math.inf)
    return Mean(float((kl * mask).sum()), float(mask.sum()))


def fraction_count(fraction: float, n: int) -> int:
    """k = max(1, floor(fraction·n)): the count rule of Lp-Reg (ρ), 80/20, KL-Cov and Clip-Cov (their reference code)."""
    return max(1, math.floor(fraction * n))


def select_extreme(values: torch.Tensor, pool: torch.Tensor, k: int, largest: bool = False) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest (or largest) ``values`` among ``pool`` (same shape).

    Values are detached. Ties: the lower flat index first (a stable sort), the rule the spec's vectors assume.
    """
    fill = -math.inf if largest else math.inf
    flat = values.detach().masked_fill(~pool, fill).flatten()
    order = torch.sort(flat, descending=largest, stable=True).indices[:k]
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[order] = True
    return out.view_as(values) & pool


def token_share(flags: torch.Tensor, mask: torch.Tensor) -> Mean:
    """The share of the masked tokens where ``flags`` holds, as a mean over tokens (it merges exactly)."""
    return Mean(float((flags.to(mask.dtype) * mask).sum()), float(mask.sum()))


def pg_metrics(pg: torch.Tensor, reg: torch.Tensor, clipfrac: Mean) -> dict[str, Reducible]:
    """``loss/pg`` and ``loss/reg`` (this call's shares of the mini-batch loss) and ``policy/clipfrac``."""
    return {"loss/pg": Sum(pg.item()), "loss/reg": Sum(reg.item()), "policy/clipfrac": clipfrac}


# Import for the registration side effect: one module per family. The order is the figures' legend order.
from lpreg.core.losses import lpreg, ppo, cov, control  # noqa: E402, F401, I001
