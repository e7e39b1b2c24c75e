"""The learning-rate warm-up (lpreg/native/schedule.py): its values, and a resumed run equal to an uninterrupted one."""

import pytest
import torch
from conftest import FAST, compose_cfg

from lpreg.native.schedule import apply_lr, warmup_factor


def test_warmup_factor_is_linear_then_constant():
    assert [warmup_factor(t, 4) for t in (1, 2, 3, 4, 5, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0
    with pytest.raises(ValueError, match="trainer.lr_warmup_steps"):
        warmup_factor(1, -1)


def test_apply_lr_leaves_the_optimizer_alone_when_off():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-4)
    apply_lr(opt, 1.0, 1, 0)
    assert opt.param_groups[0]["lr"] == 3e-4
    apply_lr(opt, 1e-3, 2, 8)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)


@pytest.mark.slow
def test_warmup_values_logged_and_resume_equals_uninterrupted(tmp_path):
    from test_trainer import read_jsonl, run_train

    warm = ["trainer.lr_warmup_steps=4", "eval.at_start=false", "trainer.lr=2e-4"]
    run_train(compose_cfg([*FAST, *warm, "trainer.steps=2"]), tmp_path)
    run_train(compose_cfg([*FAST, *warm, "trainer.steps=4", "trainer.resume=true"]), tmp_path, resume=True)
    fresh = tmp_path / "fresh"
    run_train(compose_cfg([*FAST, *warm, "trainer.steps=4"]), fresh)
    rows = read_jsonl(fresh / "metrics.jsonl")
    assert [r["optim/lr"] for r in rows] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4])
    assert (tmp_path / "metrics.jsonl").read_bytes() == (fresh / "metrics.jsonl").read_bytes()
    state = torch.load(fresh / "checkpoints" / "step_000004" / "trainer_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # saved with the optimizer
