"""The one study loop: every Optuna study lpreg runs (a plain sweep, each stage of the comparison protocol) goes through
:func:`run_study`, with Hydra's launcher running the jobs.

A study is described by a :class:`StudySpec`: its search space, the sampler the sweep file names, how many trials it
should end with, the seeds each trial runs, points to enqueue first (e.g. an arm's default), and how its job folders
are named. The loop:

- opens (or resumes) the study in the storage (SQLite in the sweep folder by default; any Optuna RDB URL);
- **recovers** what a killed sweeper left: a RUNNING trial whose owner process is gone (its pid and host are the
  trial's ``owner`` attribute; ``lpreg/runfolder.py`` tells a dead process) is told from its jobs' summaries when they
  all ended, else told FAIL and enqueued again with the same parameters, so nothing is repeated or lost and no trial
  stays RUNNING; trials of other hosts that stopped beating for ``sweep.grace_s`` are failed by Optuna's
  ``fail_stale_trials`` (and retried ``sweep.max_retries`` times);
- enqueues the requested points not yet in the study;
- asks trials in batches of ``sweep.batch_size`` until the study holds ``n_trials`` claimed trials (complete, pruned,
  failed without a retry, or running), launches one job per seed and trial, records the trials' heartbeats while
  they run, and tells each trial the mean of its jobs' objectives (FAIL if any job failed, PRUNED if one was pruned).

``n_trials`` is the study's total, so running the same command again finishes an interrupted study and adds
nothing to a finished one; several workers on one storage share the trials (a race between two asks can add one).

Samplers (``sweep.sampler``, one of :data:`SAMPLERS`): ``tpe`` (``n_startup_trials`` = ``sweep.startup_trials``,
which must be below the trials it serves, so TPE models something), ``random``, ``grid`` (Optuna's GridSampler over
the categorical choices: every grid point exactly once; ``n_trials`` is the grid's size). Each study has its own
sampler seed, derived from ``sweep.sampler_seed`` and the study's name (:func:`study_seed`); TPE's and the random
sampler's seed of each batch adds the number of the batch's first trial, so a resumed study samples new points
reproducibly (a grid keeps one seed: its order, and so which points are visited, depends on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpreg.redact import mask_url, redact_text
from lpreg.runfolder import identity, process_gone

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=Warning, module="optuna._experimental")

SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
OWNER = "owner"  # trial user attribute: the sweeper process that launched it
RETRIED = "retried"  # trial user attribute: this FAIL was enqueued again (it does not count as a trial)


@dataclass
class StudySpec:
    """One Optuna study and how its trials become jobs."""

    name: str
    params: dict[str, dict]  # key -> {type: float|int|categorical, low, high, log, choices}
    n_trials: int
    seeds: list[int]  # each trial's jobs (unused when ``seed`` is a parameter: :func:`job_seeds`)
    fixed: list[str]  # overrides every job gets
    folder: Callable[[int, dict, int | None], str]  # (trial number, params, seed) -> job folder in the sweep folder
    sampler: str = "tpe"
    sampler_seed: int = 0
    startup_trials: int = 5
    direction: str = "maximize"
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # points asked first, in order


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


def grid_space(params: dict[str, dict]) -> dict[str, list]:
    bad = [k for k, v in params.items() if v["type"] != "categorical"]
    if bad:
        raise ValueError(f"sweep.sampler=grid needs categorical sweep.params; {', '.join(bad)} are not")
    return {k: list(v["choices"]) for k, v in params.items()}


def grid_size(params: dict[str, dict]) -> int:
    return math.prod(len(v) for v in grid_space(params).values())


def study_seed(base: int, name: str) -> int:
    """The sampler seed of study ``name``: ``sweep.sampler_seed`` mixed with the name, so studies differ."""
    return int.from_bytes(hashlib.sha256(f"{base}/{name}".encode()).digest()[:4], "little")


def make_sampler(spec: StudySpec, seed: int):
    """The Optuna sampler ``spec.sampler`` names, seeded with ``seed``."""
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _grid_sampler()(grid_space(spec.params), seed=seed)


def _grid_sampler():
    import optuna

    class AskTellGrid(optuna.samplers.GridSampler):
        """Optuna's grid sampler under ask-and-tell: its ``after_trial`` stops ``study.optimize`` once the grid is
        covered, which outside ``optimize`` raises; the study loop stops at the grid's size itself."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGrid



def check_spec(spec: StudySpec) -> StudySpec:
    """Refuse a study that cannot do what it says: a grid whose size differs from its trials, TPE with no trial
    after its start-up (a study of enqueued points only, ``startup_trials`` 0, samples nothing and is allowed)."""
    if spec.sampler == "grid" and spec.n_trials != grid_size(spec.params):
        raise ValueError(f"sweep {spec.name}: sweep.sampler=grid visits each of its {grid_size(spec.params)} points "
                         f"once; set sweep.n_trials={grid_size(spec.params)} (it is {spec.n_trials})")
    if spec.sampler == "tpe" and 0 < spec.startup_trials >= spec.n_trials - len(spec.enqueue):
        raise ValueError(f"sweep {spec.name}: sweep.startup_trials={spec.startup_trials} random trials leave TPE "
                         f"nothing to model in {spec.n_trials} trials ({len(spec.enqueue)} enqueued); lower it")
    return spec


def open_study(name: str, storage_url: str, sweep, retries: int = 20):
    """Create or load study ``name``; its storage records trial heartbeats (``sweep.heartbeat_s``/``grace_s``; stale
    trials retried ``sweep.max_retries`` times); tolerates several workers creating it at the same moment."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    from lpreg.harness.pruning import make_pruner

    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if storage_url.startswith("sqlite") else {}
    kwargs |= {"heartbeat_interval": sweep.heartbeat_s, "grace_period": sweep.grace_s}
    if sweep.max_retries:
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
            optuna.storages.RetryFailedTrialCallback
        kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=sweep.max_retries)
    for attempt in range(retries):
        try:
            storage = optuna.storages.RDBStorage(storage_url, **kwargs)
            return optuna.create_study(study_name=name, storage=storage, direction=sweep.direction,
                                       pruner=make_pruner(sweep.pruner, sweep.pruner_startup), load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, IntegrityError, OperationalError) as err:
            log.warning("opening study %s (attempt %d): %s", name, attempt + 1, redact_text(str(err)))
            time.sleep(0.2 + 0.3 * attempt)
    raise RuntimeError(f"could not open Optuna study {name!r} at {mask_url(storage_url)}")


class Heartbeat:
    """Records the heartbeat of running trials every ``interval`` seconds in a thread, while their jobs run (Optuna
    does this itself only inside ``study.optimize``, not with ask-and-tell)."""

    def __init__(self, storage, trial_ids: list[int], interval: float):
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

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def read_summary(job_dir: Path) -> dict:
    p = job_dir / "summary.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        return {}


def tell(study, trial, job_dirs: list[Path]) -> str:
    """Tell ``trial`` its jobs' result: the mean objective, PRUNED if a job was pruned, FAIL if any failed or has no
    final status (killed from outside: its summary is rewritten as failed so the multirun summary lists it)."""
    import optuna

    summaries = []
    for d in job_dirs:
        s = read_summary(d)
        if s.get("status", "running") == "running":
            s = {**s, "status": "failed", "error": "the job ended without a final status (killed?)"}
            d.mkdir(parents=True, exist_ok=True)
            (d / "summary.tmp").write_text(json.dumps(s, indent=1, sort_keys=True))
            (d / "summary.tmp").replace(d / "summary.json")
        summaries.append(s)
    states = [s.get("status") for s in summaries]
    values = [s.get("objective") for s in summaries]
    if "pruned" in states:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "PRUNED"
    if all(st == "completed" for st in states) and all(v is not None and math.isfinite(v) for v in values):
        study.tell(trial, sum(values) / len(values))
        return "COMPLETE"
    log.warning("study %s: trial %d failed (job status %s, objectives %s)", study.study_name, trial.number, states,
                values)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return "FAIL"


def recover(study, spec: StudySpec, sweep_dir: Path, grace_s: int) -> list[int]:
    """Settle the RUNNING trials a dead sweeper left (module docstring); returns the numbers of those re-enqueued."""
    import optuna

    optuna.storages.fail_stale_trials(study)  # other hosts' trials silent for grace_s
    again = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if not owner or not process_gone(owner):
            continue  # a live worker's trial (or one of another host, left to its heartbeat)
        dirs = [sweep_dir / spec.folder(t.number, t.params, s) for s in job_seeds(spec)]
        trial = optuna.trial.Trial(study, t._trial_id)
        if all(read_summary(d).get("status") not in (None, "running") for d in dirs):
            log.info("study %s: trial %d ended before its sweeper was killed; told now", spec.name, t.number)
            tell(study, trial, dirs)
            continue
        log.warning("study %s: trial %d was cut by a killed sweeper (pid %s on %s): failed and asked again with the "
                    "same parameters", spec.name, t.number, owner.get("pid"), owner.get("host"))
        study._storage.set_trial_user_attr(t._trial_id, RETRIED, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        again.append(t.number)
    return again


def job_seeds(spec: StudySpec) -> list[int | None]:
    """The seeds of each trial's jobs; ``[None]`` when the seed is itself a parameter of the study (one job a
    trial, e.g. one fresh seed each)."""
    return [None] if "seed" in spec.params else list(spec.seeds)


def claimed(study) -> int:
    """Trials that count towards ``n_trials``: complete, pruned, running, and failed unless retried (by this loop's
    recovery, or by Optuna's stale-trial callback, whose copy names the failed trial). A waiting trial (enqueued: a
    requested point, or a retry) does not count yet: the loop's next ``ask`` runs it."""
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state.name in ("COMPLETE", "PRUNED", "RUNNING") or
               (t.state.name == "FAIL" and not t.user_attrs.get(RETRIED) and t.number not in retried)
               for t in study.trials)


def enqueue_points(study, spec: StudySpec) -> None:
    """Enqueue each of ``spec.enqueue`` not yet in the study (matched by parameters)."""
    have = [t.params for t in study.trials] + [t.system_attrs.get("fixed_params", {}) for t in study.trials]
    for point in spec.enqueue:
        if not any(all(p.get(k) == v for k, v in point.items()) for p in have):
            study.enqueue_trial(point, user_attrs={"enqueued": True})


def run_study(spec: StudySpec, sweep, launcher, sweep_dir: Path, storage: str, job_idx: list[int] | None = None):
    """Run study ``spec`` to its ``n_trials`` (module docstring); returns the Optuna study. ``job_idx`` (a one-item
    list) numbers the launched jobs across several studies of one sweep."""
    check_spec(spec)
    study = open_study(spec.name, storage, sweep)
    recover(study, spec, sweep_dir, sweep.grace_s)
    enqueue_points(study, spec)
    job_idx = job_idx if job_idx is not None else [0]
    base_seed = study_seed(spec.sampler_seed, spec.name)
    # Every job writes into this sweep's folder and reports to this study's storage, whatever the sweep file's
    # folder pattern or storage default would make of the job's own sweep.name (a stage of the protocol has its own).
    where = [f"hydra.sweep.dir='{Path(sweep_dir).resolve()}'"]
    if storage.startswith("sqlite") and not sweep.storage:  # a local file: no password to keep out of the jobs
        where.append(f"sweep.storage='{storage}'")
    while (missing := spec.n_trials - claimed(study)) > 0:
        first = len(study.trials)
        # grid: one seed for the study (the grid's order depends on it, and visited points are kept by their place
        # in that order); the others: a seed per batch, so that a resumed study samples new points
        study.sampler = make_sampler(spec, base_seed if spec.sampler == "grid" else base_seed + first)
        trials = [study.ask() for _ in range(min(sweep.batch_size, missing))]
        jobs = []
        for t in trials:
            t.set_user_attr(OWNER, identity())
            t.set_user_attr("sampler_seed", base_seed + first)
            values = {k: suggest(t, k, dict(v)) for k, v in spec.params.items()}
            params = [f"{k}={v}" for k, v in values.items()]
            jobs += [[*spec.fixed, *where, *params, *([f"seed={s}"] if s is not None else []), f"sweep.name={spec.name}",
                      f"sweep.trial={t.number}", f"hydra.sweep.subdir={spec.folder(t.number, values, s)}"]
                     for s in job_seeds(spec)]
        error = None
        try:
            with Heartbeat(study._storage, [t._trial_id for t in trials], sweep.heartbeat_s):
                launcher.launch(jobs, initial_job_idx=job_idx[0])
        except Exception as err:  # told below as FAIL, then re-raised unless a job was killed (SLURM)
            log.error("study %s, trials %s: the launcher raised %s: %s", spec.name, [t.number for t in trials],
                      type(err).__name__, err)
            error = err
        job_idx[0] += len(jobs)
        for t in trials:
            tell(study, t, [sweep_dir / spec.folder(t.number, t.params, s) for s in job_seeds(spec)])
        if error is not None and not job_was_killed(error):
            raise error
    return study


def job_was_killed(err: BaseException) -> bool:
    """Whether a launcher error means a job ended without a result (submitit: scancel, time limit, node failure)."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:
        return False
    return isinstance(err, UncompletedJobError)


def job_overrides(arguments: list[str]) -> list[str]:
    """The command line's overrides for each job, ``sweep.storage`` masked (a job that prunes reads the real URL from
    ``$LPREG_SWEEP_STORAGE``, see ``lpreg/harness/pruning.py``)."""
    is_storage = lambda a: a.lstrip("+~").split("=", 1)[0] == "sweep.storage"  # noqa: E731
    return [redact_text(a) if is_storage(a) else a for a in arguments if "=" in a]


def report(study, sweep_dir: Path) -> dict:
    """``trials.csv`` and ``best.json`` of a study in ``sweep_dir`` (figures: ``analysis/plots.py`` on the folder)."""
    import optuna

    study.trials_dataframe().to_csv(sweep_dir / "trials.csv", index=False)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = {"best_value": study.best_value, "best_params": study.best_params,
            "best_trial": study.best_trial.number} if done else {"best_value": None}
    best["n_trials"] = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    (sweep_dir / "best.json").write_text(json.dumps(best, indent=1))
    return best
