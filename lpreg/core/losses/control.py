"""The positive control of the spark task: GRPO plus a floor on the spark's probability at the decision point.

Not a method: it uses what no exploration regularizer knows (which token is the spark, and where the decision is).
It exists to show that the testbed can register an effect at all: if keeping p(spark) from falling does not beat
GRPO's held-out accuracy, no regularizer that keeps it alive could either, and the task needs changing.

    L = L_GRPO + c · (1 / S) Σ_{decision points s} max(0, log f − log π_θ(spark | s))

with f = ``floor``, c = ``coef``, S = the mini-batch's responses (``Norm.seqs``, so micro-batches add up exactly). The
decision point is response position 0, and π_θ(spark | s) comes from the task's declared per-token target
``spark_log_prob`` (the trainer computes it for a task with a decision point). The hinge is 0 (and so is its gradient)
wherever π_θ(spark) >= f, so the control only lifts the spark when it falls below the floor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from lpreg.checks import NON_NEGATIVE, OPEN_UNIT, ranged
from lpreg.core.losses import LossInputs, PPOClipConfig, pg_metrics, register
from lpreg.core.losses.ppo import _ppo
from lpreg.core.reduce import Sum

SPARK_TARGET = "spark_log_prob"  # the per-token targets a task with a decision point provides
SPARK_SAMPLED = "spark_sampled"


@dataclass
class SparkFloorConfig(PPOClipConfig):
    name: str = "spark_floor"
    floor: float = ranged(0.2, OPEN_UNIT)  # f: π_θ(spark) at the decision point is pushed back up to this
    coef: float = ranged(1.0, NON_NEGATIVE)  # c
    # no negative advantage on the responses that open with the spark: the mode learns from its successes only
    protect: bool = False


def _below(inp: LossInputs, cfg: SparkFloorConfig) -> torch.Tensor:
    """Decision points (response position 0 of each response) where π_θ(spark) < floor, ``[B, T]``."""
    if SPARK_TARGET not in inp.new:
        raise ValueError("regularizer=spark_floor needs a task with a decision point (task=spark): the task declares "
                         "the spark whose probability the control keeps up")
    at_decision = torch.zeros_like(inp.response_mask, dtype=torch.bool)
    at_decision[:, 0] = inp.response_mask[:, 0] > 0
    return at_decision & (inp.new[SPARK_TARGET].detach() < math.log(cfg.floor))


@register("spark_floor", SparkFloorConfig, label="control: p(spark) floor", color="#17becf", acts_on=_below,
          control=True)
def spark_floor_loss(inp: LossInputs, cfg: SparkFloorConfig):
    """GRPO's PPO-clip loss plus the floor's hinge (module docstring)."""
    below = _below(inp, cfg)  # [B, T]
    if cfg.protect:
        opened = inp.new[SPARK_SAMPLED][:, :1] > 0  # [B, 1] the response opens with the spark
        inp = dataclasses.replace(inp, advantages=torch.where(opened, inp.advantages.clamp_min(0), inp.advantages))
    pg, clipfrac = _ppo(inp, cfg)
    hinge = (math.log(cfg.floor) - inp.new[SPARK_TARGET]).clamp_min(0) * below  # [B, T]
    reg = cfg.coef * hinge.sum() / max(inp.counts().seqs, 1.0)
    metrics = pg_metrics(pg, reg, clipfrac)
    metrics["control/active"] = Sum(float(below.sum()))
    return pg + reg, metrics
