"""Entry point: ``python -m lpreg.run [overrides]`` (one run) or ``python -m lpreg.run -m ...`` (multirun).

The one place that reads the config: Hydra composes ``lpreg/conf/`` against the structured schemas of
``lpreg/harness/config.py``; the resolved config is saved by Hydra in ``<job>/.hydra/`` and logged to W&B. Each job
writes ``summary.json`` (status ``running`` -> ``completed`` | ``failed`` | ``pruned``; ``crashed`` when read later
for a ``running`` one whose process is gone) into its Hydra job folder, holding ``run.lock`` (``lpreg/runfolder.py``)
while it runs. Every value range is checked when the typed config is built, before any work (``lpreg/checks.py``);
a resume continues from the newest checkpoint that loads, with the config it was written with
(``lpreg/native/checkpoint.py``). Secrets are
masked in everything written (``lpreg/redact.py``; Hydra's own files by ``lpreg.harness.callbacks.MaskSecrets``).

A failing job in a multirun is recorded (summary.json, a failed W&B run) and does not stop the other jobs; the
multirun ends with a non-zero exit once all jobs ran (see ``lpreg/harness/callbacks.py``). The task function returns
the configured objective (``objective.*``), which the Optuna sweeper maximizes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lpreg.harness import pruning
from lpreg.harness.config import PACKAGE, embedded_values, register_configs
from lpreg.harness.summary import summarize
from lpreg.redact import redact, redact_text

log = logging.getLogger("lpreg")
register_configs()


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def thread_budget(requested: int, launcher_cfg) -> int:
    """Torch threads for this job: ``requested`` if set, else the machine's cores shared among parallel jobs."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_jobs = launcher_cfg.get("n_jobs", 1) if "joblib" in str(launcher_cfg.get("_target_", "")) else 1
    n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
    return max(1, cores // n_jobs)


def wandb_group(cfg, root: Path, multirun: bool) -> str | None:
    """W&B group: ``wandb.group`` if set, else the study name of a sweep, else the multirun folder (date/time)."""
    if cfg.wandb.group:
        return cfg.wandb.group
    if cfg.get("sweep") is not None:
        return cfg.sweep.name
    return "/".join(root.parts[-2:]) if multirun else None


def write_json(path: Path, data: dict) -> None:
    """Write ``path`` atomically (a temporary file, fsync, rename). If that fails (a full disk), the temporary file
    is removed and ``{"status", "error"}`` alone is written over ``path`` in place, which needs no new disk blocks
    when it is shorter than the summary there, so a ``running`` summary does not outlive its process."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data, indent=1, sort_keys=True, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        short = {"status": data.get("status"), "error": f"{data.get('error', '')} (summary.json: {err})"}
        with open(path, "r+" if path.exists() else "w") as fh:
            fh.write(json.dumps(short))
            fh.truncate()
        raise


def stop_on_sigterm() -> None:
    """Turn SIGTERM (SLURM before its time limit, ``kill``) into ``SystemExit`` so that ``finally`` blocks run and
    ``summary.json`` gets a final status (main thread only; other threads cannot set signal handlers)."""
    import signal
    import threading

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def refuse_several_processes(env=None) -> None:
    """The native trainer is one process: a launch as several (torchrun, SLURM tasks) is refused before any work,
    since every process would train the same run in the same folder. Many GPUs run through ``backend=verl``.
    ``env`` defaults to the environment read when called: launchers such as submitit pickle this module's functions
    by value, default arguments included, so a default bound at import would be the submitting process's."""
    env = os.environ if env is None else env
    world = max(int(env.get("WORLD_SIZE", 1)), int(env.get("SLURM_STEP_NUM_TASKS", 1)))  # torchrun; an srun step
    if world > 1:
        raise SystemExit(f"lpreg.run was launched as {world} processes (WORLD_SIZE / SLURM_STEP_NUM_TASKS): the native "
                         "trainer is one process (a CPU or one GPU). For several GPUs or nodes use backend=verl; for "
                         "SLURM, launch one task per job (hydra.launcher.tasks_per_node=1)")


def previous_run(job_dir: Path) -> str | None:
    """``crashed`` if ``job_dir/summary.json`` says ``running`` but its process is gone, else its status."""
    from lpreg.runfolder import process_gone

    try:
        s = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return "crashed" if s.get("status") == "running" and process_gone(s) else s.get("status")


def print_table(summary: dict) -> None:
    rows = [("metric", "start", "final", "best")]
    for k in summary["final"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        rows.append((k, fmt(summary["initial"].get(k)), fmt(summary["final"].get(k)), fmt(summary["best"].get(k))))
    for k in ("policy/entropy", "train/reward_mean", "lpreg/regularized"):
        if k in summary["last_train"] and summary["last_train"][k] is not None:
            rows.append((k + " (last step)", "", f"{summary['last_train'][k]:.4f}", ""))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    print("\n".join([lines[0], "-" * len(lines[0]), *lines[1:]]), flush=True)


def backend_train(name: str):
    """The ``train(cfg, job_dir, tracker, resume, on_eval)`` of ``backend=``: the native trainer or verl."""
    if name == "verl":
        from lpreg.verl.launch import train
    else:
        from lpreg.native.trainer import train
    return train


@hydra.main(version_base="1.3", config_path="pkg://lpreg.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    import optuna

    from lpreg import runfolder
    from lpreg.harness.tracking import build_tracker, wandb_env
    from lpreg.native.checkpoint import check_resume_config, find_resume

    stop_on_sigterm()  # first: a SIGTERM from here on ends in finally blocks, and summary.json says failed
    refuse_several_processes()
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    root = Path(hc.sweep.dir) if multirun else job_dir
    cfg_obj = OmegaConf.to_object(cfg)  # every declared value range is checked here (lpreg/checks.py)
    cfg_obj.trainer.num_threads = thread_budget(cfg.trainer.num_threads, hc.launcher)
    reg = cfg.regularizer.name
    arm = cfg.arm or reg
    lock = runfolder.acquire(job_dir)  # before anything is written: one writer per folder
    base = {"status": "running", "seed": cfg.seed, "regularizer": reg, "arm": arm, "git_revision": git_revision(),
            "num_threads": cfg_obj.trainer.num_threads, **runfolder.identity(),
            "overrides": redact(list(hc.overrides.task)), "job_dir": str(job_dir)}
    if (before := previous_run(job_dir)) == "crashed":
        log.warning("the previous run in %s crashed (its summary.json says running, its process is gone)", job_dir)
    if cfg.trainer.resume and before:
        base["previous_status"] = before
    write_json(job_dir / "summary.json", base)
    if cfg_obj.model.kind == "hf" and (still := embedded_values(cfg_obj)):
        log.warning("model=hf with values sized for the embedded CPU testbed (set them, or use experiment=<name> "
                    "from lpreg/conf/experiment/):\n  %s",
                    "\n  ".join(still))
    wandb_env(root)
    t0 = time.time()
    tracker = None
    summary = {**base, "status": "failed", "error": "interrupted"}  # what summary.json says if the job is stopped
    try:
        resume = find_resume(job_dir) if cfg.trainer.resume else None
        if resume is not None:
            log.info("resuming from %s (step %d)", resume.path, resume.state["step"])
            check_resume_config(resume, cfg_obj, force=cfg.trainer.resume_force)
        elif cfg.trainer.resume:
            log.warning("trainer.resume=true, but %s holds no checkpoint to resume from: starting fresh", job_dir)
        # the tracker exists before the model and task load, so that a bad model or task is tracked too
        tracker = build_tracker(cfg_obj.wandb, job_dir, OmegaConf.to_container(cfg, resolve=True),
                                wandb_group(cfg, root, multirun), name=f"{arm}-s{cfg.seed}", job_type=arm,
                                tags=[f"git:{base['git_revision']}", *cfg.wandb.tags],
                                run_id=resume.state.get("wandb_run_id") if resume else None,
                                resume_step=resume.state["step"] if resume else 0)
        out = backend_train(cfg_obj.backend.name)(cfg_obj, job_dir, tracker, resume,
                                                  on_eval=pruning.reporter(cfg_obj.sweep, root, cfg.objective.metric))
        summary = {**base, **summarize(out["evals"], out["last"], cfg_obj), "status": "completed"}
        tracker.summary({f"final/{k}": v for k, v in summary["final"].items()}
                        | {f"best/{k}": v for k, v in summary["best"].items()}
                        | {"final/policy/entropy": summary["last_train"].get("policy/entropy")})
    except optuna.TrialPruned as err:
        summary = {**base, "status": "pruned", "error": str(err)}
        log.info("job %s pruned: %s", job_dir, err)
    except Exception as err:  # any failure is recorded (summary.json, W&B) before it propagates
        summary = {**base, "status": "failed", "error": redact_text(f"{type(err).__name__}: {err}")}
        if not multirun:
            raise
        log.error("job %s failed:\n%s", job_dir, traceback.format_exc())
    finally:
        summary["wall_time_s"] = round(time.time() - t0, 2)
        if tracker is not None:
            tracker.finish(exit_code=0 if summary["status"] in ("completed", "pruned") else 1)
            if failed := tracker.failed_mirrors():
                summary |= {name: "failed" for name in failed} | {f"{n}_error": redact_text(e) for n, e in failed.items()}
        try:
            write_json(job_dir / "summary.json", summary)
        finally:
            runfolder.release(lock)
    if summary["status"] != "completed":
        return math.nan
    print_table(summary)
    print(f"run folder: {job_dir}", flush=True)
    return summary["objective"]


if __name__ == "__main__":
    main()
