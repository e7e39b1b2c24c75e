"""Optuna pruning from inside a job, through the study's storage (works with every launcher).

The sweeper tells each job which trial it evaluates (``sweep.trial``); the job opens the same study from the same
storage and reports its held-out metric after each evaluation; when the pruner says so it raises
``optuna.TrialPruned``, which ``run.py`` records as status ``pruned``. Pruning needs one seed per trial (several
jobs reporting the same trial would mix their curves).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lpreg.redact import unmask

STORAGE_ENV = "LPREG_SWEEP_STORAGE"  # the recommended way to give a storage URL with a password


PRUNERS = ("none", "median", "hyperband")  # sweep.pruner


def make_pruner(name: str, startup: int = 5):
    """The Optuna pruner of ``sweep.pruner`` (one of :data:`PRUNERS`; the config refuses any other); the median
    pruner prunes nothing before ``startup`` trials completed (``sweep.pruner_startup``)."""
    import optuna

    return {"none": optuna.pruners.NopPruner,
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0),
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def storage_url(sweep, sweep_dir: Path, env=os.environ) -> str:
    """``sweep.storage``, else ``$LPREG_SWEEP_STORAGE``, else ``sqlite:///<sweep_dir>/<sweep.name>.db``.

    Jobs get ``sweep.storage`` with its password masked; a masked URL is replaced by the environment variable when
    that one masks to the same text, and is an error otherwise.
    """
    url = unmask(sweep.storage, STORAGE_ENV, env) if sweep.storage else None
    return url or env.get(STORAGE_ENV) or f"sqlite:///{(Path(sweep_dir) / f'{sweep.name}.db').resolve()}"


def reporter(sweep, sweep_dir: Path, metric: str) -> Callable[[int, dict], None] | None:
    """``report(step, eval_metrics)`` for the job's trial, or None when the job is not a prunable trial."""
    if sweep is None or sweep.trial is None or sweep.pruner == "none" or len(sweep.seeds) != 1:
        return None
    import optuna

    study = optuna.load_study(study_name=sweep.name, storage=storage_url(sweep, sweep_dir),
                              pruner=make_pruner(sweep.pruner, sweep.pruner_startup))
    # Optuna has no public "trial by number" for another process; the storage maps it to the trial id.
    trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                                              sweep.trial))

    def report(step: int, metrics: dict[str, float]) -> None:
        if step == 0 or metric not in metrics:  # the initial policy is the same for every trial
            return
        trial.report(metrics[metric], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({metric}={metrics[metric]:.4f})")

    return report
