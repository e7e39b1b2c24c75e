"""lpreg's losses in verl's policy-loss registry, and which of verl's own losses stand for which arm.

Every regularizer of ``lpreg.core.losses.REGULARIZERS`` is registered in verl's registry
(``verl.trainer.ppo.core_algos.register_policy_loss``) as ``lpreg:<name>`` (``loss_mode(name)``). The registered
function has verl's signature ``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights)`` and calls our pure loss, so the same code serves both backends:

- Aggregation: verl hands the loss one micro-batch and the mini-batch's counts in ``config.global_batch_info``
  (``batch_num_tokens``: response tokens of the whole mini-batch over all data-parallel ranks;
  ``global_batch_size``: its sequences; ``dp_size``). They become our ``Norm`` (tokens, and sequences for both the
  sequence counts: verl counts every sequence of the mini-batch), so the micro-batch's loss is its share of the
  mini-batch loss, and, as verl's ``agg_loss`` does, the value is multiplied by ``dp_size`` because FSDP averages
  gradients over ranks.
- Truncated importance weights (``rollout_is_weights``) multiply the advantages, as the native trainer's
  ``rollout.tis_cap`` does, so they weight the policy-gradient term and leave a regularizer's own terms alone
  (verl's losses multiply the per-token loss instead; with the weights off, the default, both are the same).
- Targets: an arm that needs per-token targets (Lp-Reg's proxy log-probabilities, the entropy of the 80/20 rule
  and of the entropy bonus) gets them from lpreg's actor extension (``lpreg/verl/extension.py``), which passes
  ``lpreg=LpregCall(...)``; verl's own ``ppo_loss`` passes none, and such an arm then stops with a message naming
  the extension. Called by verl's own ``ppo_loss``, the function returns plain floats (verl averages them over
  micro-batches); called by the extension, it returns our mergeable values (``lpreg.core.reduce``).

verl's own losses are used for the arms where ``tests/test_verl.py`` shows that they equal ours in value and
gradient, with the arm's values translated into verl's keys (``VERL_OWN``, ``actor_fields``): ``none`` and
``clip_higher`` are verl's ``vanilla`` with its dual clip switched off (``clip_ratio_c`` above the largest ratio
the log-ratio clamp at 20 allows: the reference's GRPO has no dual clip), ``kl_cov``, ``clip_cov`` and ``gspo``.
``clip_cov`` draws its random tokens from torch's CPU generator in verl and from the tensors' device in ours: the
same tokens on a CPU under the same random state (tested), possibly other tokens of the same count on a GPU. The
other arms (``lpreg`` with every switch, ``highent_8020``, which verl lacks, and ``entropy``, whose bonus needs the
entropy with its gradient inside the loss) run our registered functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lpreg.core.losses import LOG_RATIO_CLAMP, REGULARIZERS, LossInputs, Norm
from lpreg.core.reduce import Mean, Reducible, Sum, results

PREFIX = "lpreg:"
# Above e^20 (the ratio after the log-ratio clamp at 20), so verl's dual-clip branch never binds.
CLIP_RATIO_C_OFF = float(math.ceil(math.exp(LOG_RATIO_CLAMP)) * 2)

# arm -> verl's own loss_mode, for the arms whose verl form equals ours (tests/test_verl.py)
VERL_OWN = {"none": "vanilla", "clip_higher": "vanilla", "kl_cov": "kl_cov", "clip_cov": "clip_cov",
            "gspo": "gspo"}


def loss_mode(arm: str) -> str:
    """The name of our implementation of ``arm`` in verl's registry."""
    return PREFIX + arm


def verl_loss_mode(arm: str) -> str:
    """The ``actor.policy_loss.loss_mode`` a verl run of ``arm`` uses: verl's own where it equals ours."""
    return VERL_OWN.get(arm, loss_mode(arm))


def actor_fields(reg_cfg) -> dict[str, Any]:
    """verl's actor keys (dotted, under ``actor_rollout_ref.actor``) that carry the arm's values."""
    arm = reg_cfg.name
    out: dict[str, Any] = {"policy_loss.loss_mode": verl_loss_mode(arm), "loss_agg_mode": reg_cfg.loss_agg,
                           "clip_ratio_c": CLIP_RATIO_C_OFF}
    if hasattr(reg_cfg, "clip_low"):
        out |= {"clip_ratio_low": reg_cfg.clip_low, "clip_ratio_high": reg_cfg.clip_high}
    if arm == "kl_cov":
        out |= {"policy_loss.kl_cov_ratio": reg_cfg.k_percent / 100, "policy_loss.ppo_kl_coef": reg_cfg.kl_coef}
    if arm == "clip_cov":
        out |= {"policy_loss.clip_cov_ratio": reg_cfg.clip_ratio, "policy_loss.clip_cov_lb": reg_cfg.cov_lb,
                "policy_loss.clip_cov_ub": reg_cfg.cov_ub}
    return out


@dataclass(frozen=True)
class LpregCall:
    """What lpreg's actor extension passes to a registered loss besides verl's arguments."""

    reg_cfg: Any  # the arm's config (its schema in lpreg.core.losses)
    old: dict[str, torch.Tensor] = field(default_factory=dict)  # π_old's declared targets, [b, R], detached
    new: dict[str, torch.Tensor] = field(default_factory=dict)  # the current policy's, [b, R], with gradient
    rollout: dict[str, Any] = field(default_factory=dict)  # per-rollout values (Lp-Reg's δ for scope: batch)


def batch_norm(config) -> tuple[Norm | None, int]:
    """The mini-batch's counts and the data-parallel size from verl's ``config.global_batch_info`` (none set: the
    call is the whole mini-batch on one rank)."""
    info = dict(getattr(config, "global_batch_info", None) or {}) if config is not None else {}
    dp = int(info.get("dp_size") or 1)
    tokens, seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    if tokens is None or seqs is None:
        return None, dp
    return Norm(float(tokens), float(seqs), float(seqs)), dp


def scaled(metrics: dict[str, Reducible], dp: int) -> dict[str, Reducible]:
    """Counts and sums times ``dp``: verl averages a metric over ranks, so the average is then the total."""
    out: dict[str, Reducible] = {}
    for key, v in metrics.items():
        if isinstance(v, Sum):
            out[key] = Sum(v.value * dp)
        elif isinstance(v, Mean):
            out[key] = Mean(v.total * dp, v.weight * dp)
        else:
            out[key] = v
    return out


def default_config(arm: str, config, loss_agg_mode: str):
    """The arm's config when verl's own ``ppo_loss`` calls us: its schema defaults, with the clip range and the
    aggregation taken from verl's config."""
    schema = REGULARIZERS.get(arm).config
    names = {f.name for f in dataclasses.fields(schema)}
    values: dict[str, Any] = {"loss_agg": loss_agg_mode}
    if config is not None and "clip_low" in names:
        low, high = config.get("clip_ratio_low"), config.get("clip_ratio_high")
        values |= {k: v for k, v in (("clip_low", low), ("clip_high", high)) if v is not None}
    return schema(**values)


def policy_loss(arm: str):
    """verl's ``PolicyLossFn`` for our implementation of ``arm`` (module docstring)."""
    reg = REGULARIZERS.get(arm)
    needs_targets = bool(reg.old_targets(reg.config()) or reg.new_targets(reg.config()))

    def fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode: str = "token-mean", config=None,
           rollout_is_weights=None, lpreg: LpregCall | None = None):
        if lpreg is None and needs_targets:
            raise RuntimeError(f"verl loss_mode={loss_mode(arm)!r} needs per-token targets that only lpreg's actor "
                               "extension computes: run it with `python -m lpreg.run backend=verl ...`")
        call = lpreg or LpregCall(default_config(arm, config, loss_agg_mode))
        norm, dp = batch_norm(config)
        adv = advantages if rollout_is_weights is None else advantages * rollout_is_weights
        mask = response_mask.to(log_prob.dtype)
        inp = LossInputs(log_prob=log_prob, old_log_prob=old_log_prob, advantages=adv, response_mask=mask,
                         old=call.old, new=call.new, rollout=call.rollout, norm=norm)
        loss, metrics = reg.loss(inp, call.reg_cfg)
        metrics = scaled(metrics, dp)
        return loss * dp, (metrics if lpreg is not None else results(metrics))

    fn.__name__ = fn.__qualname__ = f"lpreg_{arm}_policy_loss"
    fn.__doc__ = f"lpreg's {reg.label} loss ({reg.loss.__module__}.{reg.loss.__name__}) in verl's signature."
    return fn


def register() -> list[str]:
    """Register every lpreg arm but the testbeds' positive controls in verl's policy-loss registry (again on every
    call: it is a dict); returns the registered names."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    names = []
    for reg in REGULARIZERS.entries():
        if reg.control:  # a testbed's positive control needs its task's decision point: native runs only
            continue
        register_policy_loss(loss_mode(reg.name))(policy_loss(reg.name))
        names.append(loss_mode(reg.name))
    return names

