"""The fair comparison of regularizers (issue 20): every arm tuned with the same budget, each winner re-run on fresh
seeds, and only those re-runs compared.

    python -m lpreg.run -m +sweep=fair regularizer=lpreg,entropy,clip_higher,none [sweep.n_trials=6] [trainer.steps=..]
    python analysis/plots.py multirun/sweeps/fair

The ``lpreg_optuna`` sweeper runs this mode when ``sweep.eval_seeds`` is set (``sweeps/fair.yaml``):

1. Tuning. One Optuna study per arm, ``<sweep.name>_<arm>``, all in one storage (``sweep.storage``, else
   ``$LPREG_SWEEP_STORAGE``, else ``<sweep dir>/<sweep.name>.db``). An arm's search space is ``sweep.params`` (what
   every arm tunes, e.g. ``trainer.lr``) plus the ``params`` of its own sweep file ``sweeps/<sweep.spaces[arm]>.yaml``;
   an arm without an entry (``none``) tunes only the shared ones. Every arm gets ``sweep.n_trials`` trials in total,
   the same tuning seeds ``sweep.seeds`` (a trial's value is the mean objective over them), the same sampler and
   sampler seed. Jobs: ``tune_<arm>_trial_<n>_s<seed>``.
2. Fresh seeds. Each arm's best trial is re-run on every ``sweep.eval_seeds`` seed (none of which a trial used):
   ``eval_<arm>_s<seed>``. Only these runs enter the comparison (``analysis/plots.py`` reads the folders that
   ``fair.json`` lists), so the
   winner's curse (the best of N noisy trials looks better than it is) shows as the gap between the tuning objective
   and the fresh-seed result.
3. ``fair.json``: per arm the study, its search space and main hyperparameter, the best trial, its parameters and
   tuning objective, and the fresh-seed job folders.

Resumable: ``sweep.n_trials`` is each study's total, not a number to add. Running the command again tells the
trials a killed run left RUNNING whose jobs all wrote a final summary, counts finished trials (complete, pruned,
failed), asks only for the missing ones, and skips every fresh-seed job whose summary says completed. A trial killed
in the middle of its jobs stays RUNNING in the storage and is replaced by a new one. Any launcher: jobs go through the
sweeper's launcher in batches of ``sweep.batch_size`` trials (the fresh-seed jobs of all arms in one batch).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lpreg.config import ROOT
from lpreg.redact import mask_url

log = logging.getLogger(__name__)

FAIR_FILE = "fair.json"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def split_arms(arguments: list[str]) -> tuple[list[str], list[str]]:
    """The arms of ``regularizer=a,b,c`` (in the given order) and the other command-line overrides."""
    arms, rest = [], []
    for o in OverridesParser.create().parse_overrides(arguments):
        if o.key_or_group == "regularizer":
            arms = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
        else:
            rest.append(o.input_line)
    if not arms:
        raise ValueError("+sweep=fair compares arms: add regularizer=<a>,<b>,... (e.g. regularizer=lpreg,none)")
    return arms, rest


def arm_space(sweep: DictConfig, arm: str, sweeps_dir: Path = ROOT / "sweeps") -> tuple[dict, str]:
    """``(params, main)``: the arm's search space (the shared ``sweep.params`` and its own sweep file's ``params``)
    and its main hyperparameter (the first of its own, else the first shared one)."""
    shared = {k: OmegaConf.to_container(v) for k, v in sweep.params.items()}
    own = {}
    name = sweep.spaces.get(arm)
    if name is not None:
        path = sweeps_dir / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"sweep.spaces.{arm}={name}: {path} does not exist (a file of sweeps/)")
        own = {k: OmegaConf.to_container(v) for k, v in OmegaConf.load(path).sweep.params.items()}
    both = sorted(set(shared) & set(own))
    if both:
        raise ValueError(f"sweep.spaces.{arm}={name} also tunes {', '.join(both)}, which sweep.params tunes for every "
                         "arm: remove it from one of the two")
    return {**shared, **own}, next(iter(own), next(iter(shared)))


def check_seeds(sweep: DictConfig) -> None:
    """Fresh seeds must be fresh: ``sweep.eval_seeds`` disjoint from the tuning seeds ``sweep.seeds``."""
    reused = sorted(set(sweep.eval_seeds) & set(sweep.seeds))
    if reused:
        raise ValueError(f"sweep.eval_seeds {list(sweep.eval_seeds)} reuses tuning seeds {reused} (sweep.seeds): "
                         "choose seeds no trial used")


def finished_trials(study) -> int:
    return sum(t.state.name in FINISHED for t in study.trials)


def tune_folder(sweep_dir: Path, arm: str, number: int, seed: int) -> Path:
    """The job folder of one tuning job (flat in the sweep folder, so the multirun summary lists it)."""
    return sweep_dir / f"tune_{arm}_trial_{number:04d}_s{seed}"


def recover(study, sweep_dir: Path, arm: str, seeds: list[int]) -> None:
    """Tell the RUNNING trials whose jobs all ended (a run killed between its jobs' end and the tell)."""
    import optuna

    from hydra_plugins.lpreg_sweeper.optuna_sweeper import LpregOptunaSweeper

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        dirs = [tune_folder(sweep_dir, arm, t.number, s) for s in seeds]
        summaries = [d / "summary.json" for d in dirs]
        if all(p.exists() and json.loads(p.read_text()).get("status") not in (None, "running") for p in summaries):
            log.info("study %s: trial %d ended before a kill, told now", study.study_name, t.number)
            LpregOptunaSweeper._tell(study, optuna.trial.Trial(study, t._trial_id), dirs)


def completed(job_dir: Path) -> bool:
    p = job_dir / "summary.json"
    return p.exists() and json.loads(p.read_text()).get("status") == "completed"


def run_fair(sweeper, arguments: list[str]) -> None:
    """The fair comparison (module docstring) with ``sweeper``'s config and launcher."""
    from hydra_plugins.lpreg_sweeper.optuna_sweeper import (
        LpregOptunaSweeper,
        job_overrides,
        job_was_killed,
        open_study,
        suggest,
    )
    from lpreg.pruning import storage_url

    cfg = sweeper.config
    sweep = cfg.sweep
    check_seeds(sweep)
    arms, rest = split_arms(arguments)
    fixed = job_overrides(rest)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage_url(sweep, sweep_dir)
    common = [f"++sweep.storage='{mask_url(storage)}'"]  # jobs that prune open the same storage (password masked)
    if not any(a.split("=", 1)[0].lstrip("+~") == "wandb.group" for a in fixed):
        common.append(f"wandb.group={sweep.name}")  # all arms in one W&B group
    info = {"name": sweep.name, "storage": mask_url(storage), "seeds": list(sweep.seeds),
            "eval_seeds": list(sweep.eval_seeds), "n_trials": sweep.n_trials, "arms": {}}
    job_idx = 0
    for arm in arms:
        space, main = arm_space(sweep, arm)
        arm_sweep = OmegaConf.merge(sweep, {"name": f"{sweep.name}_{arm}"})
        study = open_study(arm_sweep, storage)
        recover(study, sweep_dir, arm, list(sweep.seeds))
        while (missing := sweep.n_trials - finished_trials(study)) > 0:
            trials = [study.ask() for _ in range(min(sweep.batch_size, missing))]
            jobs = []
            for t in trials:
                params = [f"{k}={suggest(t, k, v)}" for k, v in space.items()]
                jobs += [[*fixed, f"regularizer={arm}", *params, *common, f"seed={s}", f"sweep.name={arm_sweep.name}",
                          f"sweep.trial={t.number}", f"hydra.sweep.subdir={tune_folder(sweep_dir, arm, t.number, s).name}"]
                         for s in sweep.seeds]
            err = launch(sweeper.launcher, jobs, job_idx)
            job_idx += len(jobs)
            for t in trials:
                LpregOptunaSweeper._tell(study, t, [tune_folder(sweep_dir, arm, t.number, s) for s in sweep.seeds])
            if err is not None and not job_was_killed(err):
                raise err
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        entry = {"study": arm_sweep.name, "space": space, "main_param": main,
                 "trials": {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}}
        if done:
            best = study.best_trial
            entry.update(best_trial=best.number, best_params=best.params, tuning_objective=best.value,
                         eval_dirs=[f"eval_{arm}_s{s}" for s in sweep.eval_seeds])
        else:
            log.error("arm %s: no trial completed, so it has no best configuration to re-run", arm)
        info["arms"][arm] = entry
    (sweep_dir / FAIR_FILE).write_text(json.dumps(info, indent=1))

    jobs = []
    for arm, entry in info["arms"].items():
        params = [f"{k}={v}" for k, v in entry.get("best_params", {}).items()]
        for s, d in zip(sweep.eval_seeds, entry.get("eval_dirs", [])):
            if not completed(sweep_dir / d):
                jobs.append([*fixed, f"regularizer={arm}", *params, *common, f"seed={s}", f"hydra.sweep.subdir={d}"])
    err = launch(sweeper.launcher, jobs, job_idx) if jobs else None
    if err is not None and not job_was_killed(err):
        raise err
    failed = [d for e in info["arms"].values() for d in e.get("eval_dirs", []) if not completed(sweep_dir / d)]
    print(f"\nfair comparison {sweep.name}: " + json.dumps({a: {k: e.get(k) for k in ("best_params", "tuning_objective")}
                                                         for a, e in info["arms"].items()}), flush=True)
    if failed:
        log.error("fresh-seed runs not completed: %s (run the command again to retry them)", failed)


def launch(launcher, jobs: list[list[str]], initial_job_idx: int) -> Exception | None:
    """Launch ``jobs``; returns the launcher's error instead of raising it, so that the caller first records what
    ended (trials told FAIL) and then raises it, as the ``lpreg_optuna`` sweeper does."""
    try:
        launcher.launch(jobs, initial_job_idx=initial_job_idx)
    except Exception as err:  # returned: re-raised by the caller unless a job was killed (SLURM)
        log.error("the launcher raised %s: %s", type(err).__name__, err)
        return err
    return None
