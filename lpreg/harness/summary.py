"""A run's summary: its held-out history reduced to the numbers ``summary.json`` holds and the sweep objective.

- ``final``: the last evaluation; ``best``: the best over every evaluation (the paper reports the best score during
  training); ``initial``: the step-0 evaluation of the starting policy; ``last_mean``: the mean of the last
  ``objective.last_n`` evaluations after step 0 (less noisy than one evaluation).
- The objective (what a sweep maximizes) is ``objective.metric`` reduced by ``objective.mode``, one of
  :data:`OBJECTIVE_MODES`.
"""

from __future__ import annotations

import math

OBJECTIVE_MODES = ("final", "best", "last_mean")


def after_start(evals: list[dict], n: int) -> list[dict]:
    """The last ``n`` evaluations after step 0 (the warm-up model's evaluation is no result of training); all of
    ``evals`` when there is none after step 0."""
    trained = [e for e in evals if e["step"] > 0]
    return (trained or evals)[-n:]


def objective(evals: list[dict], cfg) -> float:
    """The sweep objective from the eval history: ``final``, ``best`` (over every evaluation, step 0 included) or
    ``last_mean`` (the mean over :func:`after_start`, as ``summary.json``'s ``last_mean``) of ``objective.metric``."""
    kept = [e for e in evals if e.get(cfg.metric) is not None and not math.isnan(e[cfg.metric])]
    vals = [e[cfg.metric] for e in kept]
    if not vals:
        return math.nan
    if cfg.mode == "final":
        return vals[-1]
    if cfg.mode == "best":
        return max(vals)
    tail = [e[cfg.metric] for e in after_start(kept, cfg.last_n)]
    return sum(tail) / len(tail)


def summarize(evals: list[dict], last: dict, cfg) -> dict:
    """The summary block of ``summary.json`` (module docstring) from the eval history and the last step's metrics;
    ``eval_split`` names the problems every evaluation scored (``eval.split``)."""
    keys = sorted({k for e in evals for k in e if k.startswith("eval/")})
    ok = lambda v: v is not None and not math.isnan(v)
    best = {k: max((e[k] for e in evals if k in e and ok(e[k])), default=None) for k in keys}
    tail = after_start(evals, cfg.objective.last_n)
    last_mean = {k: sum(vals) / len(vals) for k in keys if (vals := [e[k] for e in tail if ok(e.get(k))])}
    return {
        "eval_split": cfg.eval.split,
        "final": {k: v for k, v in (evals[-1].items() if evals else []) if k.startswith("eval/")},
        "best": best,
        "last_mean": last_mean,
        "initial": {k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals and evals[0]["step"] == 0 else {},
        "final_step": evals[-1]["step"] if evals else None,
        "last_train": {k: v for k, v in last.items() if k.split("/")[0] in ("policy", "train", "lpreg", "loss", "spark")},
        "objective": objective(evals, cfg.objective),
    }
