"""A task's decision point in the trainer: the spark's log-probability per token, and the ``spark/*`` metrics.

A task with a :class:`lpreg.tasks.DecisionPoint` (the spark task) declares one rare token chosen at response
position 0. The token pass computes log π(spark) at every response position, in the no-grad pass of π_old
(``spark_log_prob``: the metrics read position 0) and with gradient in the update (``inp.new["spark_log_prob"]``: the
positive control's floor uses it); a task without one adds nothing.
"""

from __future__ import annotations

import torch

from lpreg.core.metrics import decision_metrics
from lpreg.native.tokens import TokenFn

TARGET = "spark_log_prob"
SAMPLED = "spark_sampled"  # 1 where the sampled token is the spark


def spark_id(task, tokenizer) -> int | None:
    """The token id of the task's spark, or None for a task without a decision point."""
    if task.decision is None:
        return None
    ids = tokenizer.encode(task.decision.token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"task {task.name!r}: its spark {task.decision.token!r} is {len(ids)} tokens of this "
                         "tokenizer; a decision point needs exactly one")
    return ids[0]


def targets(token: int | None) -> dict[str, TokenFn]:
    """``{"spark_log_prob": log softmax(z)[:, token], "spark_sampled": 1[y = spark]}`` per response token, or nothing
    without a spark."""
    if token is None:
        return {}
    return {TARGET: lambda logits, tokens, old: torch.log_softmax(logits, -1)[:, token],
            SAMPLED: lambda logits, tokens, old: (tokens == token).to(logits.dtype)}


def first_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """Index, in the flat row-major order of ``response_mask`` ``[B, R]``, of each non-empty row's first token."""
    lengths = (response_mask > 0).sum(-1)  # [B]
    starts = torch.cumsum(lengths, 0) - lengths
    return starts[lengths > 0]


def rollout_metrics(token: int | None, flat_log_prob: torch.Tensor, gen, rewards: torch.Tensor,
                    adv_rows: torch.Tensor) -> dict[str, float]:
    """``spark/*`` of a rollout from π_old's flat ``spark_log_prob`` (empty dict without a spark)."""
    if token is None:
        return {}
    has = (gen.response_mask > 0).any(-1)  # [B]
    first = first_positions(gen.response_mask)
    used = gen.response_ids[has, 0] == token
    return decision_metrics(flat_log_prob[first].exp(), used, rewards[has] > 0.5, adv_rows[has])
