"""Optuna sweeps through Hydra's multirun (the study loop end to end): run, resume, failure, two workers, pruning."""

import json
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow  # every test here runs sweeps through the CLI

TINY = ["trainer.steps=2", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0"]


def states(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.state.name for t in study.trials], study


def test_sweep_runs_resumes_and_reports(tmp_path):
    args = ["-m", "+sweep=lpreg_core", "sweep.n_trials=3", "sweep.startup_trials=1", *TINY,
            f"hydra.sweep.dir={tmp_path}/sw"]
    run_cli(args, cwd=tmp_path)
    sw = tmp_path / "sw"
    storage = json.loads((sw / "study.json").read_text())["storage"]
    assert storage.startswith("sqlite:///") and (sw / "lpreg_core.db").exists()
    st, study = states(storage, "lpreg_core")
    assert st == ["COMPLETE"] * 3
    assert sorted(p.name for p in sw.glob("trial_*")) == ["trial_0000_s0", "trial_0001_s0", "trial_0002_s0"]
    for t in study.trials:  # each trial's value is its job's objective, and its params reached the job's config
        summary = json.loads((sw / f"trial_{t.number:04d}_s0" / "summary.json").read_text())
        assert t.value == pytest.approx(summary["objective"])
        assert f"regularizer.kappa={t.params['regularizer.kappa']}" in summary["overrides"]
    best = json.loads((sw / "best.json").read_text())
    assert best["best_value"] == pytest.approx(study.best_value)
    assert (sw / "trials.csv").stat().st_size > 0

    for extra in ([str(sw)], ["--storage", storage, "--study", "lpreg_core"]):  # the analysis CLI on a sweep
        out = tmp_path / f"figs{len(extra)}"
        proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), *extra, "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        for name in ("sweep_history.pdf", "sweep_importance.png", "sweep_slice.png"):
            assert (out / name).stat().st_size > 0

    run_cli(args, cwd=tmp_path)  # the same command again: the study is complete, nothing runs
    assert states(storage, "lpreg_core")[0] == ["COMPLETE"] * 3
    run_cli(args[:2] + ["sweep.n_trials=5", *args[3:]], cwd=tmp_path)  # a larger total: two more trials
    st, _ = states(storage, "lpreg_core")
    assert st == ["COMPLETE"] * 5 and len(list(sw.glob("trial_*"))) == 5


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # mini_batches=3 does not divide 4 prompts x 8 samples: those trials raise in the trainer
    args = ["-m", "+sweep=clip_higher", "sweep.n_trials=4", "sweep.sampler_seed=1",
            "++sweep.params={regularizer.clip_high:{type:float,low:0.2,high:0.5},"
            "trainer.mini_batches:{type:categorical,choices:[1,3]}}", *TINY, f"hydra.sweep.dir={tmp_path}/sw"]
    proc = run_cli(args, cwd=tmp_path)
    storage = json.loads((tmp_path / "sw" / "study.json").read_text())["storage"]
    st, study = states(storage, "clip_higher")
    assert len(st) == 4 and "FAIL" in st and "COMPLETE" in st, st
    for t in study.trials:
        summary = json.loads((tmp_path / "sw" / f"trial_{t.number:04d}_s0" / "summary.json").read_text())
        assert (summary["status"] == "failed") == (t.state.name == "FAIL")
    assert "study clip_higher" in proc.stdout


def test_two_workers_share_one_sqlite_study(tmp_path):
    import os

    args = [sys.executable, "-m", "lpreg.run", "-m", "+sweep=entropy_coef", "sweep.n_trials=4", "sweep.startup_trials=2",
            *TINY, f"hydra.sweep.dir={tmp_path}/sw"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outs]
    st, study = states(f"sqlite:///{tmp_path}/sw/entropy_coef.db", "entropy_coef")
    assert st == ["COMPLETE"] * 4 and sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # the total, shared
    assert len(list((tmp_path / "sw").glob("trial_*"))) == 4
    owners = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert owners == {w.pid for w in workers}  # both workers ran trials of the one study


def test_pruning_reporter_reports_through_the_storage(tmp_path):
    from omegaconf import OmegaConf

    from lpreg.harness import pruning

    sweep = OmegaConf.create({"name": "s", "storage": None, "pruner": "median", "pruner_startup": 5, "seeds": [0],
                              "trial": None})
    study = optuna.create_study(study_name="s", storage=pruning.storage_url(sweep, tmp_path), direction="maximize",
                                pruner=pruning.make_pruner("median"))
    for _ in range(5):  # the median pruner starts after 5 complete trials
        t = study.ask()
        t.report(0.9, 5)
        study.tell(t, 0.9)
    trial = study.ask()
    assert pruning.reporter(sweep, tmp_path, "eval/mean") is None  # not a trial job
    sweep.trial = trial.number
    report = pruning.reporter(sweep, tmp_path, "eval/mean")
    report(0, {"eval/mean": 0.0})  # the initial evaluation is not reported
    with pytest.raises(optuna.TrialPruned):
        report(5, {"eval/mean": 0.1})
    assert optuna.load_study(study_name="s", storage=pruning.storage_url(sweep, tmp_path)).trials[-1].intermediate_values \
        == {5: 0.1}


def test_a_bad_trial_is_pruned_and_recorded_as_pruned(tmp_path):
    """Three good learning rates first (enqueued, in order), then one that destroys the policy: the median pruner,
    past its 2 start-up trials, prunes that one at its first evaluation after step 0."""
    args = ["-m", "+sweep=clip_higher", "sweep.n_trials=4", "sweep.pruner=median", "sweep.pruner_startup=2",
            "sweep.startup_trials=0", "++sweep.params={trainer.lr:{type:float,low:1e-9,high:1.0,log:true}}",
            "++sweep.enqueue=[{trainer.lr:1e-9},{trainer.lr:2e-9},{trainer.lr:3e-9},{trainer.lr:0.5}]",
            "trainer.steps=3", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0",
            f"hydra.sweep.dir={tmp_path}/sw"]
    run_cli(args, cwd=tmp_path)
    st, study = states(f"sqlite:///{tmp_path}/sw/clip_higher.db", "clip_higher")
    assert st == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"], st
    assert study.trials[3].params["trainer.lr"] == 0.5
    summary = json.loads((tmp_path / "sw" / "trial_0003_s0" / "summary.json").read_text())
    assert summary["status"] == "pruned" and "pruned at step 1" in summary["error"]
