"""The learning-rate schedule: a linear warm-up (``trainer.lr_warmup_steps``), then the constant ``trainer.lr``.

    lr(t) = trainer.lr · min(1, t / W)      at rollout step t = 1, 2, ...;  W = trainer.lr_warmup_steps (0 = off)

Why: AdamW's first update moves every parameter by about ±lr whatever the gradient's size, so the first step is a
jump (on the embedded default ``policy/approx_kl`` was 12.4 at step 1 and at most 0.12 afterwards).

The shape is transformers' ``get_constant_schedule_with_warmup`` (used by TRL; verl adapts it for
``actor.optim.lr_warmup_steps``): linear, then constant. The factor is counted in rollout steps (every mini-batch
update of step t uses lr(t)). One departure: that schedule's factor is ``current_step / W`` with ``current_step``
starting at 0, which spends the first update at learning rate 0; here step 1 already uses lr / W.

The learning rate is a pure function of the step, which the checkpoint holds, and lives in the optimizer's
``param_groups`` (checkpointed with the optimizer's state): a resumed run sets exactly the value an uninterrupted run
sets, with no scheduler object to save. With W = 0 the optimizer's learning rate is never touched.
"""

from __future__ import annotations


def warmup_factor(step: int, warmup_steps: int) -> float:
    """min(1, step / W) for the 1-based rollout step ``step``; 1 when ``warmup_steps`` is 0."""
    if warmup_steps < 0:
        raise ValueError(f"trainer.lr_warmup_steps={warmup_steps} must be >= 0 (0 = no warm-up)")
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def apply_lr(opt, base_lr: float, step: int, warmup_steps: int) -> None:
    """Set every parameter group's learning rate to lr(step); nothing is touched when ``warmup_steps`` is 0."""
    if warmup_steps:
        for group in opt.param_groups:
            group["lr"] = base_lr * warmup_factor(step, warmup_steps)
