"""A Hydra Sweeper that runs an Optuna study with ask-and-tell (``hydra/sweeper=lpreg_optuna``).

Why our own: the ``hydra-optuna-sweeper`` 1.3 wheel pins ``optuna<3`` (and SQLAlchemy<2 for SQLite). This one uses
current Optuna through Hydra's Sweeper API, so ``-m`` multirun, launchers (basic, joblib, submitit) and config
composition keep working. The study is described by the job config's ``sweep`` node (``sweeps/*.yaml``).

- Storage: ``sweep.storage`` if set, else the environment variable ``LPREG_SWEEP_STORAGE``, else an SQLite file in
  the sweep folder (any Optuna storage URL; PostgreSQL for several machines). A URL with a password belongs in the
  environment variable (``export LPREG_SWEEP_STORAGE=postgresql://user:pw@host/db``): that is the recommended way,
  as the URL then never enters a config. Wherever the URL is written (``study.json``, logs) its password is masked
  (``lpreg/redact.py``); the jobs, which do not use it, get ``sweep.storage`` masked.
- ``load_if_exists``: running the same command again resumes the study and adds ``sweep.n_trials`` trials; job
  folders are named ``trial_<number>_s<seed>`` so nothing is overwritten.
- Several workers may start at once on one study: creation races are retried (SQLite with a busy timeout).
- Each trial runs one job per ``sweep.seeds`` entry and is told the mean of their objectives (``summary.json``).
  A job that failed or returned NaN makes the trial FAIL; the study goes on. So does a job that SLURM killed
  (submitit raises for it): its summary.json, missing or still ``running``, is rewritten as ``failed``. Submitit
  raises at the first such job of a batch, so with ``sweep.batch_size`` > 1 the batch's jobs still running at that
  moment are told FAIL too.
  Any other launcher error is raised after the batch's trials are told FAIL (none is left RUNNING).
- A sweeper process killed with ``kill -9`` (or a lost node) leaves its trials RUNNING: each running trial's heartbeat
  is recorded every ``sweep.heartbeat_s`` seconds, and a sweep that starts marks FAIL the trials silent for
  ``sweep.grace_s`` (Optuna's ``fail_stale_trials``) and, with ``sweep.max_retries`` > 0, asks their parameters
  again (``RetryFailedTrialCallback``). Live workers of the same study keep their trials' heartbeat, so theirs stay.
- Sampler seed: each batch's sampler is seeded with ``sweep.sampler_seed`` + the number of the batch's first trial
  (recorded as the trial's user attribute ``sampler_seed``), so a resumed study samples new parameters.
- Pruning (``sweep.pruner: median | hyperband``) on intermediate held-out accuracy, with one seed per trial: each job
  is told its trial number (``sweep.trial``) and reports through the storage (``lpreg/pruning.py``), so it works with
  every launcher.
- At the end: ``best.json``, ``trials.csv``, ``study.json`` and Optuna's plots (``analysis/figures.plot_sweep``).
"""


import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from lpreg.redact import mask_url, redact_text

log = logging.getLogger(__name__)
# Optuna warns at every ask() that heartbeats are meant for Study.optimize; here the Heartbeat thread records them.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@dataclass
class LpregOptunaSweeperConf:
    _target_: str = "hydra_plugins.lpreg_sweeper.optuna_sweeper.LpregOptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="lpreg_optuna", node=LpregOptunaSweeperConf,
                             provider="lpreg")


def suggest(trial, name: str, spec: dict) -> Any:
    """One parameter from its spec: ``{type: float|int, low, high, log?}`` or ``{type: categorical, choices}``."""
    kind = spec["type"]
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ValueError(f"sweep.params.{name}: type {kind!r} is not one of float, int, categorical")


def job_overrides(arguments: list[str]) -> list[str]:
    """The command line's overrides for each job, ``sweep.storage`` masked (a job that prunes reads the real URL from
    ``$LPREG_SWEEP_STORAGE``, see ``lpreg/pruning.py``)."""
    is_storage = lambda a: a.lstrip("+~").split("=", 1)[0] == "sweep.storage"
    return [redact_text(a) if is_storage(a) else a for a in arguments if "=" in a]


def job_was_killed(err: BaseException) -> bool:
    """Whether a launcher error means a job ended without a result (submitit: scancel, time limit, node failure)."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:
        return False
    return isinstance(err, UncompletedJobError)


def make_sampler(sweep: DictConfig):
    """The Optuna sampler of ``sweep.sampler``: ``tpe`` (seeded by ``sweep.sampler_seed``) or ``grid`` (every
    combination of the categorical ``sweep.params`` once, in a seeded order; an ablation such as ``sweeps/proxy.yaml``)."""
    import optuna

    kind = sweep.get("sampler", "tpe")
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.sampler_seed)
    if kind == "grid":
        bad = [k for k, v in sweep.params.items() if v["type"] != "categorical"]
        if bad:
            raise ValueError(f"sweep.sampler=grid needs categorical sweep.params; {', '.join(bad)} are not")
        return optuna.samplers.GridSampler({k: list(v["choices"]) for k, v in sweep.params.items()},
                                           seed=sweep.sampler_seed)
    raise ValueError(f"sweep.sampler={kind!r} must be one of: tpe, grid")


def open_study(sweep: DictConfig, storage_url: str, retries: int = 20):
    """Create or load the study, its storage recording trial heartbeats (``sweep.heartbeat_s``/``grace_s``; stale
    trials are retried up to ``sweep.max_retries`` times); tolerate several workers creating it at the same moment."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    from lpreg.pruning import make_pruner

    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if storage_url.startswith("sqlite") else {}
    kwargs |= {"heartbeat_interval": sweep.heartbeat_s, "grace_period": sweep.grace_s}
    if sweep.max_retries:  # RetryFailedTrialCallback was renamed in Optuna 4.9
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
        kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=sweep.max_retries)
    pruner = make_pruner(sweep.pruner)
    for attempt in range(retries):
        try:
            storage = optuna.storages.RDBStorage(storage_url, **kwargs)
            return optuna.create_study(study_name=sweep.name, storage=storage, direction=sweep.direction,
                                       sampler=make_sampler(sweep),
                                       pruner=pruner, load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, IntegrityError, OperationalError) as err:
            log.warning("opening study %s (attempt %d): %s", sweep.name, attempt + 1, redact_text(str(err)))
            time.sleep(0.2 + 0.3 * attempt)
    raise RuntimeError(f"could not open Optuna study {sweep.name!r} at {mask_url(storage_url)}")


def fail_stale_trials(study, grace_s: int) -> list[int]:
    """Mark FAIL the trials left RUNNING whose heartbeat stopped more than ``sweep.grace_s`` ago (their sweeper
    process died: ``kill -9``, a lost node); the storage's callback enqueues their retries. Returns their numbers."""
    import optuna

    before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    failed = sorted(before - still)
    if failed:
        log.warning("trials %s of study %s were left RUNNING by a process that stopped (no heartbeat for %s s): "
                    "marked FAIL", failed, study.study_name, grace_s)
    return failed


def reseed(study, sweep: DictConfig, first_trial: int) -> int:
    """Give the study a sampler seeded with ``sweep.sampler_seed + first_trial`` (the number of the batch's first
    trial): a resumed study or a second worker samples new parameters, and the seed is reproducible (recorded in
    each trial's user attribute ``sampler_seed``)."""
    import optuna

    seed = sweep.sampler_seed + first_trial
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return seed


class Heartbeat:
    """Records the heartbeat of running trials every ``interval`` seconds in a thread, while their jobs run (Optuna
    does this itself only inside ``study.optimize``, not with ask-and-tell)."""

    def __init__(self, storage, trial_ids: list[int], interval: float):
        import threading

        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while True:
            for tid in self.trial_ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as err:  # a storage hiccup must not stop the jobs; the next beat retries
                    log.warning("recording the heartbeat of trial id %d: %s", tid, redact_text(str(err)))
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class LpregOptunaSweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:

        from lpreg.pruning import storage_url

        cfg = self.config
        sweep = cfg.get("sweep")
        if sweep is None or not sweep.get("params"):
            raise ValueError("hydra/sweeper=lpreg_optuna needs a study: add +sweep=<name> (files in sweeps/)")
        if sweep.get("eval_seeds"):  # the fair comparison of arms (issue 20): hydra_plugins/lpreg_sweeper/fair.py
            from hydra_plugins.lpreg_sweeper.fair import run_fair

            return run_fair(self, arguments)
        sweep_dir = Path(cfg.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = storage_url(sweep, sweep_dir)
        study = open_study(sweep, storage)
        (sweep_dir / "study.json").write_text(json.dumps({"storage": mask_url(storage), "study_name": sweep.name}))
        fail_stale_trials(study, sweep.grace_s)
        if sweep.pruner != "none" and len(sweep.seeds) != 1:
            log.warning("pruning needs one seed per trial: it is off for this sweep")
        fixed = job_overrides(arguments)
        for start in range(0, sweep.n_trials, sweep.batch_size):
            trials = [study.ask() for _ in range(min(sweep.batch_size, sweep.n_trials - start))]
            seed = reseed(study, sweep, trials[0].number)
            jobs = []
            for t in trials:
                t.set_user_attr("sampler_seed", seed)
                params = [f"{k}={suggest(t, k, dict(v))}" for k, v in sweep.params.items()]
                for seed in sweep.seeds:
                    jobs.append([*fixed, *params, f"seed={seed}", f"sweep.trial={t.number}",
                                 f"hydra.sweep.subdir=trial_{t.number:04d}_s{seed}"])
            launch_error = None
            try:
                with Heartbeat(study._storage, [t._trial_id for t in trials], sweep.heartbeat_s):
                    self.launcher.launch(jobs, initial_job_idx=trials[0].number * len(sweep.seeds))
            except Exception as err:  # told below as FAIL, then re-raised unless a job was killed
                log.error("trials %s: the launcher raised %s: %s", [t.number for t in trials], type(err).__name__, err)
                launch_error = err
            for t in trials:
                self._tell(study, t, [sweep_dir / f"trial_{t.number:04d}_s{s}" for s in sweep.seeds])
            if launch_error is not None and not job_was_killed(launch_error):
                raise launch_error
        self._report(study, sweep_dir, storage)

    @staticmethod
    def _tell(study, trial, job_dirs: list[Path]) -> None:
        import optuna

        summaries = []
        for d in job_dirs:
            p = d / "summary.json"
            s = json.loads(p.read_text()) if p.exists() else {}
            if s.get("status", "running") == "running":  # ended with no final status: killed from outside
                s = {**s, "status": "failed", "error": "the job ended without a final status (killed by SLURM?)"}
                d.mkdir(parents=True, exist_ok=True)  # so that the multirun summary lists it
                p.with_suffix(".tmp").write_text(json.dumps(s, indent=1, sort_keys=True))
                p.with_suffix(".tmp").replace(p)
            summaries.append(s)
        states = [s.get("status") for s in summaries]
        values = [s.get("objective") for s in summaries]
        if "pruned" in states:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif all(st == "completed" for st in states) and all(v is not None and math.isfinite(v) for v in values):
            study.tell(trial, sum(values) / len(values))
        else:
            log.warning("trial %d failed (job status %s, objectives %s)", trial.number, states, values)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    @staticmethod
    def _report(study, sweep_dir: Path, storage: str) -> None:
        import optuna

        df = study.trials_dataframe()
        df.to_csv(sweep_dir / "trials.csv", index=False)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = {"best_value": study.best_value, "best_params": study.best_params,
                "best_trial": study.best_trial.number} if done else {"best_value": None}
        best["n_trials"] = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
        (sweep_dir / "best.json").write_text(json.dumps(best, indent=1))
        print(f"\nstudy {study.study_name}: {json.dumps(best)}", flush=True)
        if done:
            from analysis.figures import plot_sweep

            for p in plot_sweep(storage, study.study_name, sweep_dir):
                print(f"wrote {p}")
