"""Low-probability exploration metrics (lpreg/core/metrics.py): the exact mass below the threshold and the sampled count."""

import math

import torch

from lpreg.core.metrics import lowprob_mass, policy_metrics
from lpreg.native.tokens import old_pass_fns


def test_lowprob_mass_by_hand():
    z = torch.log(torch.tensor([[0.60, 0.25, 0.10, 0.04, 0.01], [0.2] * 5], dtype=torch.float64))  # [2, V]
    # row 0: 0.04 + 0.01 below 0.08; row 1: nothing below 0.08; below 0.3 everything (mass 1)
    assert torch.allclose(lowprob_mass(z, 0.08), torch.tensor([0.05, 0.0], dtype=torch.float64))
    assert torch.allclose(lowprob_mass(z, 0.3)[1], torch.tensor(1.0, dtype=torch.float64))


def test_policy_metrics_count_and_mass():
    p = torch.tensor([[0.9, 0.05, 0.02], [0.01, 0.5, 0.0]])  # [B=2, R=3] π_old(y); the last position is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = {"entropy": torch.ones(5), "tail_mass": torch.zeros(5), "lowprob_mass": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])}
    m = policy_metrics(old, p, mask, torch.zeros(2, 3, dtype=torch.long), 0.1, {})
    assert m["policy/lowprob_count"] == 3.0  # 0.05, 0.02, 0.01; the padded 0.0 is not counted
    assert math.isclose(m["policy/lowprob_frac"], 3 / 5) and math.isclose(m["policy/lowprob_mass"], 0.3, rel_tol=1e-6)


def test_the_old_pass_computes_the_mass_only_when_asked():
    fns = old_pass_fns(0.02, 0.08, {})
    z = torch.log(torch.tensor([[0.60, 0.25, 0.10, 0.04, 0.01]], dtype=torch.float64))
    assert torch.allclose(fns["lowprob_mass"](z, None, {}), torch.tensor([0.05], dtype=torch.float64))
