"""Nothing lost, nothing stuck (issue 13): value ranges, crash-consistent run folders, checkpoints that survive
damage, config checks on resume, one writer per folder, W&B as a mirror that may fail, sweeps that survive kills,
and kill -9 at several points of a run followed by a byte-identical resume."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, compose_cfg, run_cli

from lpreg import runfolder
from lpreg.checks import ConfigValueError
from lpreg.harness.tracking import LocalStore
from lpreg.native import checkpoint

# ---- 1. every bad value refused up front, naming key, value and range ------------------------------------------

BAD_VALUES = [  # (overrides, the message must contain)
    (["trainer.steps=0"], "trainer.steps=0 is out of range: it must be a finite number >= 1"),
    (["trainer.steps=-1"], "trainer.steps=-1 is out of range"),
    (["trainer.lr=-1"], "trainer.lr=-1.0 is out of range: it must be a finite number > 0"),
    (["trainer.lr=nan"], "trainer.lr=nan is out of range"),
    (["trainer.lr=inf"], "trainer.lr=inf is out of range"),
    (["regularizer=lpreg", "regularizer.rho=2"], "rho=2.0 is out of range: it must be a finite number in (0, 1]"),
    (["regularizer=lpreg", "regularizer.rho=0"], "regularizer.rho=0.0 is out of range"),
    (["regularizer=lpreg", "regularizer.kappa=0"], "kappa=0.0 is out of range: it must be a finite number in (0, 1)"),
    (["regularizer=lpreg", "regularizer.kappa=1.5"], "regularizer.kappa=1.5 is out of range"),
    (["regularizer=lpreg", "regularizer.beta=-0.1"], "beta=-0.1 is out of range: it must be a finite number >= 0"),
    (["regularizer=lpreg", "regularizer.rho_pos=1.5"], "rho_pos=1.5 is out of range: it must be a finite number in [0, 1]"),
    (["rollout.group_size=1"], "rollout.group_size=1 is out of range: it must be a finite number >= 2"),
    (["rollout.temperature=0"], "rollout.temperature=0.0 is out of range: it must be a finite number > 0"),
    (["eval.temperature=-1"], "eval.temperature=-1.0 is out of range"),
    (["metrics.lowprob_threshold=1.5"], "metrics.lowprob_threshold=1.5 is out of range"),
    (["metrics.tail_kappa=1"], "metrics.tail_kappa=1.0 is out of range"),
    (["trainer.betas=[0.9,1.0]"], "trainer.betas=[0.9, 1.0] is out of range: it must be a finite number in [0, 1)"),
    (["trainer.mini_batches=0"], "trainer.mini_batches=0 is out of range"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints=0 is out of range"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0.0 is out of range"),
    (["task.reward_timeout_s=0"], "task.reward_timeout_s=0.0 is out of range"),
    (["regularizer=entropy", "regularizer.entropy_coef=-1"], "regularizer.entropy_coef=-1.0 is out of range"),
    (["regularizer=highent_8020", "regularizer.top_frac=0"], "regularizer.top_frac=0.0 is out of range"),
    (["regularizer=kl_cov", "regularizer.k_percent=150"], "regularizer.k_percent=150.0 is out of range"),
    (["regularizer=clip_cov", "regularizer.clip_ratio=2"], "regularizer.clip_ratio=2.0 is out of range"),
    (["regularizer=clip_higher", "regularizer.clip_high=-0.1"], "regularizer.clip_high=-0.1 is out of range"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_bad_value_is_refused_when_the_config_is_built(overrides, message):
    with pytest.raises(ConfigValueError) as err:
        compose_cfg(overrides)
    assert message in str(err.value)


def test_every_numeric_field_declares_its_range():
    """A new numeric field must state its range (lpreg/checks.py) unless any value is meaningful (seeds, bounds)."""
    import re

    from lpreg.core.losses import REGULARIZERS
    from lpreg.harness import config

    free = {"seed", "seeds", "eval_seeds", "warmup_seed", "base_seed", "sampler_seed", "cov_lb", "cov_ub", "trial"}
    schemas = [config.Config, config.TrainerConfig, config.EvalConfig, config.MetricsConfig, config.ObjectiveConfig,
               config.SweepConfig, *(s for group in config.GROUPS.values() for s in group),
               *(r.config for r in REGULARIZERS.entries())]
    missing = [f"{s.__name__}.{f.name}" for s in schemas for f in dataclasses.fields(s)
               if re.search(r"\b(int|float)\b", str(f.type)) and "range" not in f.metadata and f.name not in free]
    assert not missing


@pytest.mark.slow
def test_a_bad_value_stops_the_cli_before_any_work(tmp_path):
    proc = run_cli(["trainer.steps=0", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "trainer.steps=0 is out of range" in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- 2. the local store on resume: cut back to the checkpoint, torn last line ignored ---------------------------


def test_a_torn_last_line_is_ignored_with_a_warning_naming_the_file(tmp_path, caplog):
    lines = [json.dumps({"step": s, "x": s}) for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 4, "x"')  # a kill mid-write
    (tmp_path / "timing.jsonl").write_text("\n".join(lines) + "\n" + '{"st\n')  # a full disk: cut, then newline
    with caplog.at_level(logging.WARNING):
        LocalStore(tmp_path, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(ln + "\n" for ln in lines[:3])
    assert (tmp_path / "timing.jsonl").read_text() == "".join(ln + "\n" for ln in lines[:3])
    assert f"{tmp_path / 'metrics.jsonl'}: ignoring its torn last line" in caplog.text
    assert f"{tmp_path / 'timing.jsonl'}: ignoring its torn last line" in caplog.text


def test_a_damaged_line_inside_the_store_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"ste\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: unreadable line"):
        LocalStore(tmp_path, resume_step=1)


def test_a_running_summary_of_a_dead_process_is_reported_crashed(tmp_path):
    from lpreg.harness.callbacks import collect

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = {**runfolder.identity(), "pid": int(dead.stdout)}
    for job, summary in (("0_none_s0", {"status": "running", **owner}),
                         ("1_none_s1", {"status": "running", **runfolder.identity()})):  # this process: alive
        (tmp_path / job).mkdir()
        (tmp_path / job / "summary.json").write_text(json.dumps({"regularizer": "none", **summary}))
    status = {r["job"]: r["status"] for r in collect(tmp_path, ended=False)}
    assert status == {"0_none_s0": "crashed", "1_none_s1": "running"}


# ---- 3. checkpoints: previous kept until the new one is verified; resume skips a damaged newest one ------------


class _Model:
    def __init__(self, value: float):
        self.w = torch.full((4, 4), value)

    def save_pretrained(self, path):
        from safetensors.torch import save_file

        save_file({"w": self.w}, str(path / "model.safetensors"))


class _Tokenizer:
    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{}")


def _save(job, step, keep=2):
    return checkpoint.save(job, step, _Model(step), _Tokenizer(), {"step": step}, keep=keep)


@pytest.mark.parametrize("damage", ["weights", "state", "state_missing"])
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(tmp_path, caplog, damage):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    if damage == "weights":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "state":
        f = newest / checkpoint.STATE
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (newest / checkpoint.STATE).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        point = checkpoint.find_resume(tmp_path)
    assert point.path.name == "step_000001" and point.state["step"] == 1
    assert "skipping checkpoint" in caplog.text and "step_000002" in caplog.text
    assert (tmp_path / "checkpoints" / "damaged_step_000002").is_dir()  # kept for inspection, out of the way


def test_a_failed_checkpoint_write_keeps_the_previous_ones(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 2)

    class FullDisk(_Model):
        def save_pretrained(self, path):
            (path / "model.safetensors").write_bytes(b"\x00" * 3)
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 3, FullDisk(3), _Tokenizer(), {"step": 3})
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    with caplog.at_level(logging.WARNING):
        assert checkpoint.find_resume(tmp_path).state["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp_*")) and "interrupted" in caplog.text


def test_keep_checkpoints(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_000003", "step_000004", "step_000005"]


# ---- 4. resume checks the config against the checkpoint's ------------------------------------------------------


def test_resume_with_another_config_is_an_error_listing_the_keys(caplog):
    saved = compose_cfg(["regularizer=lpreg", "seed=0"])
    point = checkpoint.Resume(ROOT, {"step": 5, "config": checkpoint.config_record(saved)})
    with pytest.raises(checkpoint.ConfigMismatchError) as err:
        checkpoint.check_resume_config(point, compose_cfg(["regularizer=none", "seed=7"]), force=False)
    msg = str(err.value)
    assert "seed: 0 -> 7" in msg and "regularizer.name: 'lpreg' -> 'none'" in msg and "resume_force" in msg
    # keys that may change: steps, eval.*, wandb.*, threads
    same = compose_cfg(["regularizer=lpreg", "trainer.steps=900", "eval.every=3", "wandb.project=x",
                        "trainer.num_threads=3", "trainer.resume=true"])
    checkpoint.check_resume_config(point, same, force=False)
    with caplog.at_level(logging.WARNING):
        checkpoint.check_resume_config(point, compose_cfg(["regularizer=lpreg", "seed=7"]), force=True)
    assert "seed: 0 -> 7" in caplog.text


def test_the_stored_config_has_its_secrets_masked():
    cfg = compose_cfg(["+sweep=lpreg_core", "sweep.storage=postgresql://u:hunter2@db/x"])
    assert "hunter2" not in json.dumps(checkpoint.config_record(cfg))


# ---- 5. one writer per run folder -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_exits_with_a_clear_message(tmp_path):
    job = tmp_path / "run"
    lock = runfolder.acquire(job)  # this test process is the live writer
    try:
        proc = run_cli(["trainer.steps=1", f"hydra.run.dir={job}"], cwd=tmp_path, check=False)
    finally:
        runfolder.release(lock)
    assert proc.returncode != 0
    assert f"run folder {job} is in use by pid {os.getpid()}" in proc.stderr
    assert not (job / "summary.json").exists() and not (job / "metrics.jsonl").exists()
    assert not lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runfolder.LOCK).write_text(json.dumps({**runfolder.identity(), "pid": int(dead.stdout)}))
    with caplog.at_level(logging.WARNING):
        lock = runfolder.acquire(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid() and "which is gone" in caplog.text
    with pytest.raises(runfolder.RunFolderBusy):  # now held by a live process (this one)
        runfolder.acquire(tmp_path)
    other_host = {"pid": int(dead.stdout), "host": "elsewhere", "start": 1}
    lock.write_text(json.dumps(other_host))  # a lock of another host is never taken over
    with pytest.raises(runfolder.RunFolderBusy, match="host elsewhere"):
        runfolder.acquire(tmp_path)


# ---- 6. W&B is a mirror: its failure never stops the run; a resume logs only steps after the checkpoint -------

TINY = ["trainer.steps=2", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0", "wandb.mode=offline"]


def _raising(where):
    from lpreg.harness.tracking import Tracker

    class Raising(Tracker):
        run_id = "raising"

        def __init__(self, *a, **k):
            if where == "init":
                raise ConnectionError("wandb.init timed out after 90 s")

        def log(self, metrics, step):
            if where == "log":
                raise OSError(30, "Read-only file system")

        def finish(self, exit_code=0):
            if where == "finish":
                raise RuntimeError("wandb finish failed")

    return Raising


@pytest.mark.parametrize("where", ["init", "log", "finish"])
def test_a_wandb_error_is_logged_once_and_the_run_completes(tmp_path, monkeypatch, where):
    import lpreg.harness.tracking
    import lpreg.run

    monkeypatch.setattr(lpreg.harness.tracking, "WandbTracker", _raising(where))
    monkeypatch.setattr(sys, "argv", ["lpreg.run", *TINY, f"hydra.run.dir={tmp_path}/run"])
    lpreg.run.main()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wandb"] == "failed" and where in summary["wandb_error"]
    job_log = "".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))  # Hydra's log of the job
    assert job_log.count("the run continues with the local store only") == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3  # steps 0, 1, 2


def test_a_resumed_wandb_run_logs_only_steps_after_the_checkpoint(monkeypatch, tmp_path):
    import wandb

    from lpreg.harness.config import WandbConfig
    from lpreg.harness.tracking import WandbTracker

    logged = []

    class Run:
        id = "abc"

        def define_metric(self, *a, **k):
            pass

        def log(self, data, step=None):
            logged.append((data["train/step"], step))

    monkeypatch.setattr(wandb, "init", lambda **k: Run())
    tracker = WandbTracker(WandbConfig(mode="offline"), tmp_path, {}, None, "n", "none", [], "abc", resume_step=5)
    for step in range(3, 8):
        tracker.log({"x": 1.0}, step)
    assert logged == [(6, 6), (7, 7)]  # at W&B step = training step, so W&B drops a step it already has


# ---- 7. sweeps: stale RUNNING trials failed and retried; a resumed study samples new parameters -------------------


def _sweep_cfg(tmp_path, **kw):
    from omegaconf import OmegaConf

    from lpreg.harness.config import SweepConfig

    return OmegaConf.structured(SweepConfig(name="s", **kw)), f"sqlite:///{tmp_path}/s.db"


def test_a_trial_of_a_silent_host_is_failed_and_retried(tmp_path):
    """A trial whose sweeper (on another host: its pid cannot be checked) stopped beating for sweep.grace_s is marked
    FAIL when a sweep opens the study, and asked again with the same parameters; a live worker's trial stays."""
    import optuna

    from lpreg.harness.sweep import Heartbeat, open_study

    sweep, url = _sweep_cfg(tmp_path, heartbeat_s=1, grace_s=1, max_retries=1)
    study = open_study("s", url, sweep)
    dead = study.ask()
    dead.suggest_float("regularizer.rho", 0.01, 0.5)
    study._storage.record_heartbeat(dead._trial_id)  # then its process is killed: no more heartbeats
    alive = study.ask()
    with Heartbeat(study._storage, [alive._trial_id], 0.2):  # a live worker's trial keeps beating
        time.sleep(2.5)
        optuna.storages.fail_stale_trials(open_study("s", url, sweep))  # what the study loop does when it opens
    trials = open_study("s", url, sweep).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING,
                                         optuna.trial.TrialState.WAITING]
    assert trials[2].params == dead.params  # the retry: asked next, with the same parameters


# ---- 8. kill -9 at several points of a 60-step run, then resume: metrics.jsonl byte-identical --------------------

RUN = ["trainer.steps=60", "trainer.prompts_per_step=4", "eval.every=10", "eval.samples=0",
       "trainer.checkpoint_every=5", "trainer.num_threads=1"]
# step:point (tests/killrun.py, which wraps the product's functions from outside): start of a step; after the update,
# nothing written; the step's lines written and its checkpoint written but not committed; just after a commit; between
# the metrics and timing lines; half a line
KILL_POINTS = ["7:rollout", "23:update", "25:checkpoint_written", "30:committed", "42:between_metrics_timing",
               "48:torn_metrics"]


def _cli(args, cwd, kill_at=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "killrun.py"), kill_at or "none", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1200, env=env)


def _complete_lines(path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_files(tmp_path):
    """One run folder is killed at each point in turn (each process resumes the previous one's kill); after each
    resume, what the resumed process wrote is the uninterrupted run's file up to where it got; the last resume
    finishes the run, and its files equal the uninterrupted run's."""
    ref = tmp_path / "ref"
    proc = _cli([*RUN, f"hydra.run.dir={ref}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = (ref / "metrics.jsonl").read_bytes()
    job, table = tmp_path / "job", []
    for i, point in enumerate([*KILL_POINTS, None]):
        proc = _cli([*RUN, *(["trainer.resume=true"] if i else []), f"hydra.run.dir={job}"], tmp_path, kill_at=point)
        assert proc.returncode == (-9 if point else 0), (point, proc.stderr[-3000:])
        if i:  # this process resumed the kill at KILL_POINTS[i - 1]
            out = proc.stdout + proc.stderr  # Hydra logs to stdout
            assert "which is gone" in out and "the previous run in" in out
            got = _complete_lines(job / "metrics.jsonl")
            resumed_at = out.split("resuming from", 1)[1].split("(step ", 1)[1].split(")", 1)[0]
            table.append((KILL_POINTS[i - 1], resumed_at, got.count(b"\n") - 1,
                          got == expected if point is None else expected.startswith(got)))
    print("\nkill point -> resumed from step, steps in metrics.jsonl when the next kill (or the end) came, identical")
    for row in table:
        print("  ".join(str(c) for c in row))
    assert all(row[3] for row in table), table
    assert (job / "metrics.jsonl").read_bytes() == expected
    assert (job / "histograms.jsonl").read_bytes() == (ref / "histograms.jsonl").read_bytes()
    assert [json.loads(ln)["step"] for ln in (job / "timing.jsonl").read_text().splitlines()] == list(range(1, 61))
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["previous_status"] == "crashed"

    # a resume with another config is refused, listing the keys (issue 13, defect 5)
    other = _cli([*RUN, "trainer.resume=true", "regularizer=lpreg", "seed=7", f"hydra.run.dir={job}"], tmp_path)
    assert other.returncode != 0
    assert "seed: 0 -> 7" in other.stderr + other.stdout
    assert "regularizer.name: 'none' -> 'lpreg'" in other.stderr + other.stdout
    # resume=true on a folder without a checkpoint says it starts fresh
    fresh = _cli(["trainer.steps=1", "trainer.prompts_per_step=4", "eval.samples=0", "trainer.resume=true",
                  f"hydra.run.dir={tmp_path / 'empty'}"], tmp_path)
    assert fresh.returncode == 0
    assert "holds no checkpoint to resume from: starting fresh" in fresh.stdout + fresh.stderr
