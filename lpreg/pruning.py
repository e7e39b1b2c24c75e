"""Optuna pruning hook: the sweeper sets ``CURRENT`` to the running trial when the job runs in its process;
``report`` is called by ``run.py`` after each held-out evaluation and raises ``optuna.TrialPruned`` to stop."""

from __future__ import annotations

CURRENT = None  # the optuna.Trial being run in this process, if any


def report(step: int, metrics: dict[str, float], metric: str) -> None:
    if CURRENT is None or step == 0 or metric not in metrics:
        return
    import optuna

    CURRENT.report(metrics[metric], step)
    if CURRENT.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} ({metric}={metrics[metric]:.4f})")
