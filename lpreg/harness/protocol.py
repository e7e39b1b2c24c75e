"""The comparison protocol: every arm gets the same chance, the winner is chosen on validation problems, and the
result is measured on fresh seeds and test problems against a contrast named before anything ran.

    python -m lpreg.run -m +sweep=protocol [sweep.protocol.arms=[lpreg,none]] [trainer.steps=...]
    python analysis/plots.py multirun/sweeps/protocol        # the report (analysis/protocol.py)

Every stage is a study of the one study loop (``lpreg/harness/sweep.py``), so every stage resumes after a kill without
repeating or losing a trial; all runs share the reporting horizon (``trainer.steps``) and the objective
(``objective.metric`` reduced by ``objective.mode``).

- Stage A, the shared parameter: every arm's learning rate on the same log-spaced grid (``sweep.protocol.lr_grid``,
  grid sampler: each value exactly once), each cell the mean over ``grid_seeds``, scored on the validation split. An
  arm whose best value is at an end of the grid gets one more value beyond that end (the grid's own ratio), once
  (``extend_grid``); ``protocol.json`` records it.
- Stage B, each arm's own parameters (its sweep file, ``spaces``) at its stage-A learning rate: TPE with
  ``sweep.startup_trials`` random trials, the arm's default point enqueued as trial 0, ``tune_trials`` trials for
  every arm, on ``tune_seeds``, validation split. An arm with no parameters of its own keeps its stage-A winner.
- Selection: each arm's winner is its best validation value; the baseline of the primary contrast is the best, on
  validation, of the arms other than ``primary`` (controls excluded), fixed before stage C runs. A tuned arm's value
  is its best of ``tune_trials`` trials on ``tune_seeds``, an untuned arm's its stage-A cell mean over ``grid_seeds``:
  the best of several trials is biased upward (the winner's curse), so the choice leans towards tuned arms. That
  bias touches only which arm becomes the baseline; the contrast itself is scored on fresh seeds in stage C.
- Stage C: each winner re-run on every ``test_seeds`` seed (none a tuning seed; the warm-up seed follows the run seed,
  so the warm-ups are fresh too), scored on the test split only. One trial per seed.
- Pre-registration: before the first job, ``protocol.json`` holds the arms, the grid, the seeds, the trial budget,
  the objective, the horizon, any departure from the protocol's standard counts, and the primary contrast
  (``primary`` against the validation-chosen baseline); a later invocation with different values is refused. The
  report marks every other contrast exploratory and adjusts the family's p-values with Holm's method, the primary
  contrast included (conservative for it: a verdict needs the primary's adjusted p below α).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

from omegaconf import OmegaConf

from lpreg.harness.config import CONF, SWEEPS
from lpreg.harness.sweep import StudySpec, run_study

log = logging.getLogger(__name__)
PROTOCOL_FILE = "protocol.json"
VALIDATION, TEST = ["eval.split=validation"], ["eval.split=test"]


class ProtocolError(ValueError):
    """A protocol that cannot give every arm the same chance as configured, or one that changed after it started."""


def own_space(spaces: dict, arm: str) -> dict[str, dict]:
    """The parameters arm ``arm`` tunes in stage B (its sweep file's ``params``); empty for an arm without one."""
    name = spaces.get(arm)
    if name is None:
        return {}
    path = SWEEPS / f"{name}.yaml"
    if not path.exists():
        raise ProtocolError(f"sweep.protocol.spaces.{arm}={name}: {path} does not exist (a file of lpreg/sweeps/)")
    own = {k: OmegaConf.to_container(v) for k, v in OmegaConf.load(path).sweep.params.items()}
    if "trainer.lr" in own:
        raise ProtocolError(f"sweep.protocol.spaces.{arm}={name} tunes trainer.lr, which stage A sets for every arm")
    return own


def default_point(arm: str, space: dict[str, dict], experiment: str | None = None) -> dict:
    """The arm's default value of each parameter it tunes, checked against the search space: stage B's trial 0. The
    default is the regularizer schema's value, or the experiment's scale-dependent one where
    ``conf/experiment_reg/<experiment>/<arm>.yaml`` sets it (as a run of that experiment composes it)."""
    from lpreg.core.losses import REGULARIZERS

    defaults = {f.name: f.default for f in dataclasses.fields(REGULARIZERS.get(arm).config)}
    scale = CONF / "experiment_reg" / str(experiment) / f"{arm}.yaml"
    if experiment and scale.exists():
        defaults.update(OmegaConf.to_container(OmegaConf.load(scale)) or {})
    point = {}
    for key, spec in space.items():
        field = key.removeprefix("regularizer.")
        if not key.startswith("regularizer.") or field not in defaults:
            raise ProtocolError(f"stage B of arm {arm}: {key} is not a field of regularizer={arm}")
        value = defaults[field]
        inside = value in spec["choices"] if spec["type"] == "categorical" else spec["low"] <= value <= spec["high"]
        if not inside:
            raise ProtocolError(f"stage B of arm {arm}: its default {key}={value} is outside the search space {spec}")
        point[key] = value
    return point


STANDARD = {"lr_grid": 4, "grid_seeds": 3, "tune_trials": 10, "test_seeds": 13}  # the protocol's minimum counts


def check(sweep) -> list[str]:
    """The protocol's rules for ``sweep`` (its ``protocol`` section): a log-spaced grid, fresh test seeds (none a tuning
    seed), the primary arm among the arms, an objective to maximize, no pruner, a TPE start-up shorter than stage B
    (refused otherwise); and its standard counts (:data:`STANDARD`: at least 4 grid values, 3 seeds a cell, 10 stage-B
    trials, 13 fresh seeds), whose shortfalls are returned as departures that the record and the report state (a run
    at paper scale may not afford them)."""
    p = sweep.protocol
    grid = sorted(p.lr_grid)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    if len(grid) < 2 or any(abs(r / ratios[0] - 1) > 1e-6 for r in ratios):
        raise ProtocolError(f"sweep.protocol.lr_grid={list(p.lr_grid)} must be log-spaced (a constant ratio)")
    reused = sorted(set(p.test_seeds) & (set(p.grid_seeds) | set(p.tune_seeds)))
    if reused:
        raise ProtocolError(f"sweep.protocol.test_seeds reuses tuning seeds {reused}: choose seeds no tuning run used")
    if p.primary not in p.arms:
        raise ProtocolError(f"sweep.protocol.primary={p.primary} is not one of the arms {list(p.arms)}")
    if sweep.direction != "maximize":
        raise ProtocolError(f"sweep.direction={sweep.direction}: the protocol compares arms on an objective to maximize")
    if sweep.pruner != "none":  # a pruned grid cell or test seed would bias the mean over seeds it is scored on
        raise ProtocolError(f"sweep.pruner={sweep.pruner}: the protocol runs every cell and seed to the horizon; "
                            "set sweep.pruner=none")
    if not 0 <= sweep.startup_trials < p.tune_trials - 1:  # checked now, not after stage A has run
        raise ProtocolError(f"sweep.startup_trials={sweep.startup_trials} leaves TPE nothing to model in stage B's "
                            f"{p.tune_trials} trials (the default point is one of them); lower it")
    counts = {"lr_grid": len(grid), "grid_seeds": len(p.grid_seeds), "tune_trials": p.tune_trials,
              "test_seeds": len(p.test_seeds)}
    out = [f"sweep.protocol.{k}: {counts[k]}, below the protocol's standard of {n}" for k, n in STANDARD.items()
           if counts[k] < n]
    for d in out:
        log.warning("departure from the protocol's standard: %s", d)
    return out


def preregistration(cfg, fixed: list[str]) -> dict:
    """What the protocol fixes before anything runs (written to ``protocol.json``)."""
    sweep, p = cfg.sweep, cfg.sweep.protocol
    return {"name": sweep.name, "objective": {"metric": cfg.objective.metric, "mode": cfg.objective.mode},
            "horizon": {"steps": cfg.trainer.steps, "eval_every": cfg.eval.every}, "task": cfg.task.name,
            "arms": list(p.arms), "lr_grid": sorted(p.lr_grid), "grid_seeds": list(p.grid_seeds),
            "extend_grid": p.extend_grid, "tune_trials": p.tune_trials, "tune_seeds": list(p.tune_seeds),
            "startup_trials": sweep.startup_trials, "test_seeds": list(p.test_seeds),
            "spaces": {a: own_space(p.spaces, a) for a in p.arms}, "overrides": fixed,
            "primary": {"arm": p.primary, "against": "the best other non-control arm on validation (stage B)",
                        "alpha": p.alpha, "test": "paired t-test over test seeds, Holm-adjusted over the family"}}


def _best_cell(study) -> tuple[float, float]:
    """``(lr, mean validation objective)`` of a stage-A study's best cell."""
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise ProtocolError(f"study {study.study_name}: no learning rate of the grid completed (see its job folders)")
    best = study.best_trial
    return best.params["trainer.lr"], best.value


def run_protocol(cfg, launcher, sweep_dir: Path, storage: str, fixed: list[str]) -> dict:
    """Stages A, B and C (module docstring) of the config's ``sweep``; returns (and writes) the protocol record."""
    from lpreg.core.losses import REGULARIZERS
    from lpreg.redact import mask_url

    sweep, p = cfg.sweep, cfg.sweep.protocol
    departures = check(sweep)
    path = sweep_dir / PROTOCOL_FILE
    pre = {**preregistration(cfg, fixed), "departures": departures}
    record = json.loads(path.read_text()) if path.exists() else {"preregistration": pre,
                                                                  "storage": mask_url(storage)}
    if record["preregistration"] != pre:
        changed = sorted(k for k in pre if pre[k] != record["preregistration"].get(k))
        raise ProtocolError(f"{path} was pre-registered with other values ({', '.join(changed)}): resume with the same "
                            "command, or start the protocol in another folder (hydra.sweep.dir=...)")
    _write(path, record)
    jobs = [0]
    common = dict(sampler_seed=sweep.sampler_seed, direction=sweep.direction)
    arms = {}
    for arm in p.arms:  # stage A: the same grid and seeds for every arm
        grid = sorted(p.lr_grid)
        study = run_study(StudySpec(
            name=f"{sweep.name}_A_{arm}", params={"trainer.lr": {"type": "categorical", "choices": grid}},
            n_trials=len(grid), seeds=list(p.grid_seeds), fixed=[*fixed, f"regularizer={arm}", *VALIDATION],
            folder=lambda n, v, s, arm=arm, grid=grid: f"A_{arm}_lr{grid.index(v['trainer.lr'])}_s{s}", sampler="grid",
            **common), sweep, launcher, sweep_dir, storage, jobs)
        cells = {t.params["trainer.lr"]: t.value for t in study.trials if t.state.name == "COMPLETE"}
        lr, value = _best_cell(study)
        extended = None
        if p.extend_grid and lr in (grid[0], grid[-1]):
            ratio = grid[1] / grid[0]
            new = grid[0] / ratio if lr == grid[0] else grid[-1] * ratio
            extended = {"at": "low" if lr == grid[0] else "high", "lr": new}
            ext = run_study(StudySpec(
                name=f"{sweep.name}_Aext_{arm}", params={"trainer.lr": {"type": "categorical", "choices": [new]}},
                n_trials=1, seeds=list(p.grid_seeds), fixed=[*fixed, f"regularizer={arm}", *VALIDATION],
                folder=lambda n, v, s, arm=arm: f"A_{arm}_lrext_s{s}", sampler="grid", **common),
                sweep, launcher, sweep_dir, storage, jobs)
            done = [t for t in ext.trials if t.state.name == "COMPLETE"]
            if done:  # an extension whose runs failed leaves the grid's own choice
                cells[new] = done[0].value
                if done[0].value > value:
                    lr, value = new, done[0].value
        arms[arm] = {"stage_a": {"cells": {repr(k): v for k, v in sorted(cells.items())}, "lr": lr, "value": value,
                                 "extended": extended}}
        record["arms"] = arms
        _write(path, record)
    for arm in p.arms:  # stage B: the same number of TPE trials for every arm that has parameters of its own
        space, entry = own_space(p.spaces, arm), arms[arm]
        lr = entry["stage_a"]["lr"]
        if not space:
            entry["stage_b"] = None
            entry["winner"] = {"trainer.lr": lr}
            entry["validation"] = entry["stage_a"]["value"]
            continue
        default = default_point(arm, space, OmegaConf.select(cfg, "hydra.runtime.choices.experiment"))
        study = run_study(StudySpec(
            name=f"{sweep.name}_B_{arm}", params=space, n_trials=p.tune_trials, seeds=list(p.tune_seeds),
            fixed=[*fixed, f"regularizer={arm}", f"trainer.lr={lr}", *VALIDATION],
            folder=lambda n, v, s, arm=arm: f"B_{arm}_trial_{n:04d}_s{s}", sampler="tpe",
            startup_trials=sweep.startup_trials, enqueue=[default], **common), sweep, launcher, sweep_dir, storage, jobs)
        trial0 = next((t for t in study.trials if t.number == 0), None)
        entry["stage_b"] = {"study": study.study_name, "default": default,
                            "default_value": trial0.value if trial0 is not None else None,
                            "trials": {s: sum(t.state.name == s for t in study.trials)
                                       for s in ("COMPLETE", "PRUNED", "FAIL")}}
        if not any(t.state.name == "COMPLETE" for t in study.trials):
            raise ProtocolError(f"study {study.study_name}: no stage-B trial completed (see its job folders)")
        entry["winner"] = {"trainer.lr": lr, **study.best_params}
        entry["validation"] = study.best_value
        _write(path, record)
    candidates = {a: e["validation"] for a, e in arms.items()
                  if a != p.primary and not REGULARIZERS.get(a).control and e["validation"] is not None}
    if "baseline" not in record:  # chosen once, on validation, before any test run
        record["baseline"] = max(candidates, key=candidates.get) if candidates else None
        _write(path, record)
    for arm in p.arms:  # stage C: fresh seeds, the test split
        winner = arms[arm]["winner"]
        run_study(StudySpec(
            name=f"{sweep.name}_C_{arm}", params={"seed": {"type": "categorical", "choices": list(p.test_seeds)}},
            n_trials=len(p.test_seeds), seeds=[], sampler="grid",
            fixed=[*fixed, f"regularizer={arm}", *[f"{k}={v}" for k, v in winner.items()], *TEST],
            folder=lambda n, v, s, arm=arm: f"C_{arm}_s{v['seed']}", **common), sweep, launcher, sweep_dir, storage, jobs)
        arms[arm]["test_dirs"] = [f"C_{arm}_s{s}" for s in p.test_seeds]
        _write(path, record)
    _write(path, record)
    print(f"\nprotocol {sweep.name}: baseline chosen on validation: {record['baseline']}; winners: "
          + json.dumps({a: e["winner"] for a, e in arms.items()}), flush=True)
    return record


def _write(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    tmp.replace(path)
