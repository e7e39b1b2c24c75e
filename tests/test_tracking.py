"""Tracking tier: local store, W&B offline inside the job folder, the multirun summary, failures, launchers."""

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli

from lpreg.harness.tracking import LocalStore

TINY = ["trainer.steps=2", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0",
        "metrics.samples_every=1"]


class FakeTracker(LocalStore):
    """Records how the run was finished (W&B's offline log is binary and has no Python reader in wandb 0.31)."""

    finished: list[int] = []
    run_id = "fake"

    def finish(self, exit_code=0):
        FakeTracker.finished.append(exit_code)


def run_in_process(monkeypatch, tmp_path, overrides):
    """``lpreg.run.main`` in this process with the tracker replaced; returns the exit codes it finished with."""
    import sys

    import lpreg.harness.tracking
    import lpreg.run

    FakeTracker.finished = []
    monkeypatch.setattr(lpreg.harness.tracking, "build_tracker", lambda cfg, job_dir, *a, **k: FakeTracker(job_dir))
    monkeypatch.setattr(sys, "argv", ["lpreg.run", *overrides, f"hydra.run.dir={tmp_path}/run"])
    with pytest.raises(SystemExit) if any("nonexistent" in o for o in overrides) else _nothing():
        lpreg.run.main()
    return FakeTracker.finished


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_local_store_writes_nulls_and_separates_timing(tmp_path):
    store = LocalStore(tmp_path)
    store.log({"policy/entropy": 0.5, "lpreg/delta": float("nan"), "timing/step": 0.1}, step=1)
    store.log_histogram("h", [0.0, 0.5, 1.0], [3, 4], step=1)
    store.log_table("samples", [{"prompt": "1+1=", "reward": 1.0}], step=1)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "policy/entropy": 0.5,
                                                                     "lpreg/delta": None}
    assert json.loads((tmp_path / "timing.jsonl").read_text()) == {"step": 1, "timing/step": 0.1}
    assert json.loads((tmp_path / "histograms.jsonl").read_text())["counts"] == [3, 4]
    LocalStore(tmp_path, resume_step=0)  # a fresh (non-resumed) job starts from empty files
    assert not (tmp_path / "metrics.jsonl").exists()


def test_two_arm_multirun_offline_wandb_and_summary_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    proc = run_cli(["-m", "regularizer=lpreg,none", *TINY, f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    mr = tmp_path / "mr"
    table = (mr / "multirun_summary.md").read_text()
    assert "| 0_lpreg_s0 | lpreg | 0 | completed |" in table and "| 1_none_s0 | none | 0 | completed |" in table
    assert "multirun summary" in proc.stdout
    for job, reg in (("0_lpreg_s0", "lpreg"), ("1_none_s0", "none")):
        d = mr / job
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["regularizer"] == reg
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 3
        assert (d / "samples.jsonl").stat().st_size > 0 and (d / "histograms.jsonl").stat().st_size > 0
        assert list(d.glob("wandb/offline-run-*"))
        assert next(d.glob("wandb/offline-run-*/run-*.wandb")).stat().st_size > 0  # W&B's log, inside the job
    # conftest points HOME at a temp folder: W&B must have written nothing there
    assert not any(Path(os.environ["HOME"]).rglob("*wandb*"))


def test_a_failing_job_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    proc = run_cli(["-m", "model=hf", "model.path=/nonexistent/model,/nonexistent/other", *TINY,
                    f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "2 of 2 jobs did not complete" in proc.stderr
    for job in ("0_none_s0", "1_none_s0"):  # the second job ran although the first failed
        d = tmp_path / "mr" / job
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "failed" and "model.path" in summary["error"]
        assert list(d.glob("wandb/offline-run-*"))  # the W&B run was created before the model failed to load


def test_a_failing_job_finishes_its_tracker_as_failed(tmp_path, monkeypatch):
    assert run_in_process(monkeypatch, tmp_path, ["model=hf", "model.path=/nonexistent", *TINY]) == [1]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    assert run_in_process(monkeypatch, tmp_path / "ok", TINY) == [0]
    from lpreg.native import checkpoint

    state = checkpoint.load_state(checkpoint.latest(tmp_path / "ok" / "run"))
    assert state["wandb_run_id"] == FakeTracker.run_id  # a resumed job reopens the same W&B run


def test_mixed_multirun_fails_only_the_bad_job(tmp_path):
    proc = run_cli(["-m", "trainer.mini_batches=3,1", *TINY, f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path,
                   check=False)
    assert proc.returncode != 0
    rows = (tmp_path / "mr" / "multirun_summary.csv").read_text().splitlines()
    assert len(rows) == 3 and ",failed," in rows[1] and ",completed," in rows[2]


def test_joblib_launcher_runs_jobs_in_parallel_with_a_thread_budget(tmp_path):
    run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY,
             f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    for job in ("0_none_s0", "1_none_s1"):
        summary = json.loads((tmp_path / "mr" / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["num_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("submitit")
    run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0", *TINY,
             f"hydra.sweep.dir={tmp_path}/mr"], cwd=tmp_path)
    summary = json.loads((tmp_path / "mr" / "0_none_s0" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (tmp_path / "mr" / "multirun_summary.md").exists()


def test_slurm_launcher_config_composes():
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "lpreg" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_


def test_wandb_group_is_the_study_or_the_multirun():
    from omegaconf import OmegaConf

    from lpreg.run import wandb_group

    root = Path("/x/multirun/2026-11-26/17-35-51")
    cfg = OmegaConf.create({"wandb": {"group": None}, "sweep": None})
    assert wandb_group(cfg, root, multirun=True) == "2026-11-26/17-35-51"
    assert wandb_group(cfg, root, multirun=False) is None
    assert wandb_group(OmegaConf.create({"wandb": {"group": None}, "sweep": {"name": "lpreg_core"}}), root, True) == \
        "lpreg_core"
    assert wandb_group(OmegaConf.create({"wandb": {"group": "mine"}, "sweep": None}), root, True) == "mine"


def test_multirun_summary_reports_jobs_stopped_from_outside_as_failed(tmp_path):
    from lpreg.harness.callbacks import collect

    for job, summary in (("0_none_s0", {"status": "completed", "seed": 0}), ("1_none_s1", {"status": "running", "seed": 1})):
        (tmp_path / job).mkdir()
        (tmp_path / job / "summary.json").write_text(json.dumps({"regularizer": "none", **summary}))
    (tmp_path / "2_none_s2" / ".hydra").mkdir(parents=True)  # killed before run.py wrote its summary
    (tmp_path / "figures").mkdir()  # not a job folder
    status = lambda ended: {r["job"]: r["status"] for r in collect(tmp_path, ended)}
    assert status(True) == {"0_none_s0": "completed", "1_none_s1": "failed", "2_none_s2": "failed"}
    assert status(False)["1_none_s1"] == "running"  # a sweep's folder: another worker may still run it
