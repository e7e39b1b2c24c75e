"""GRPO group-relative advantages (the reference code's ``compute_grpo_outcome_advantage``).

Only GRPO is implemented (every arm of the paper uses it), so there is no estimator registry yet; add one
beside this function when a second estimator arrives.
"""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean_G R) / (std_G R + eps) with the unbiased (N-1) std; all-equal groups get 0.

    ``rewards`` is ``[B]`` with the ``group_size`` responses of each prompt contiguous; returns ``[B]``.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} must be >= 2 and divide the batch of {rewards.numel()} responses")
    groups = rewards.view(-1, group_size)  # [P, G]
    mean = groups.mean(-1, keepdim=True)  # [P, 1]
    std = groups.std(-1, keepdim=True)  # [P, 1], unbiased
    adv = (groups - mean) / (std + eps)  # [P, G]
    equal = (groups == groups[:, :1]).all(-1, keepdim=True)  # [P, 1]
    return torch.where(equal, torch.zeros_like(adv), adv).view(-1)
