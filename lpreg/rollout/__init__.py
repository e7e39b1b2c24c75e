"""Rollout engines: sample responses for a list of prompts. Registry mirrors ``conf/rollout``.

Every engine returns a ``Generation``: token tensors the trainer scores, the decoded responses the task grades,
and whether each response ended with the end token (``finished``). Response tokens after the end token are
padding; the mask covers the response up to and including the end token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lpreg.registry import Registry


@dataclass
class Generation:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded
    response_mask: torch.Tensor  # [B, R] float, 1 up to and including the end token
    finished: torch.Tensor  # [B] bool, the response ended with the end token
    texts: list[str]  # decoded responses without special tokens


ROLLOUTS: Registry[type] = Registry("rollout")


def response_mask(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``[B, R]`` over tokens up to and including the first ``eos_id``, and ``finished`` ``[B]``."""
    is_eos = response_ids == eos_id  # [B, R]
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first eos
    return (~after).float(), is_eos.any(-1)


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(ids[m > 0].tolist(), skip_special_tokens=True) for ids, m in zip(response_ids, mask)]


def build_rollout(cfg, model, tokenizer, model_path: str):
    from lpreg.rollout import hf, vllm  # noqa: F401  (registration)

    return ROLLOUTS.get(cfg.name)(cfg, model, tokenizer, model_path)
