"""TV4 (GRPO advantages) and the reward-side helpers."""

import math

import torch

from lpreg.core.advantages import grpo_advantages


def test_tv4_grpo_advantages():
    adv = grpo_advantages(torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float64), group_size=8)
    assert math.isclose(adv[0].item(), 1.6201817, rel_tol=1e-6)
    assert math.isclose(adv[1].item(), -0.5400606, rel_tol=1e-6)
    assert torch.allclose(adv[[0, 3]], adv[0].expand(2)) and (adv[[1, 2, 4, 5, 6, 7]] < 0).all()


def test_all_equal_groups_get_zero_and_groups_are_independent():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, group_size=4)
    assert (adv[:8] == 0).all()
    assert math.isclose(adv[8].item(), 0.75 / (0.5 + 1e-6), rel_tol=1e-6)  # unbiased std of [1,0,0,0] = 0.5


def test_group_size_must_divide_the_batch():
    import pytest

    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(10), group_size=4)
