"""The fair comparison (+sweep=fair, issue 20): equal tuning per arm, fresh-seed re-runs, resume, and its report."""

import json
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT, run_cli
from omegaconf import OmegaConf

from hydra_plugins.lpreg_sweeper.fair import arm_space, check_seeds, split_arms

TINY = ["trainer.steps=2", "trainer.prompts_per_step=4", "eval.every=1", "eval.samples=0"]


def fair_sweep(**kw):
    base = {"name": "fair", "seeds": [0, 1], "eval_seeds": [100], "params": {"trainer.lr": {"type": "float",
            "low": 1e-4, "high": 6e-4, "log": True}}, "spaces": {"lpreg": "lpreg_core", "entropy": "entropy_coef"}}
    return OmegaConf.create({**base, **kw})


def test_arms_spaces_and_seeds():
    arms, rest = split_arms(["regularizer=lpreg,none", "trainer.steps=2", "+sweep=fair"])
    assert arms == ["lpreg", "none"] and rest == ["trainer.steps=2", "+sweep=fair"]
    with pytest.raises(ValueError, match="regularizer=<a>,<b>"):
        split_arms(["trainer.steps=2"])
    space, main = arm_space(fair_sweep(), "lpreg")
    assert list(space) == ["trainer.lr", "regularizer.kappa", "regularizer.rho", "regularizer.beta"]
    assert main == "regularizer.kappa"
    assert arm_space(fair_sweep(), "none") == ({"trainer.lr": dict(fair_sweep().params["trainer.lr"])}, "trainer.lr")
    with pytest.raises(ValueError, match="sweep.spaces.entropy=entropy_coef also tunes regularizer.entropy_coef"):
        arm_space(fair_sweep(params={"regularizer.entropy_coef": {"type": "float", "low": 0.1, "high": 1}}),
                  "entropy")
    with pytest.raises(FileNotFoundError, match="sweep.spaces.lpreg=nope"):
        arm_space(fair_sweep(spaces={"lpreg": "nope"}), "lpreg")
    with pytest.raises(ValueError, match=r"sweep.eval_seeds \[1\] reuses tuning seeds \[1\]"):
        check_seeds(fair_sweep(eval_seeds=[1]))


def test_fair_comparison_end_to_end_resumes_and_reports(tmp_path):
    sw = tmp_path / "sw"
    args = ["-m", "+sweep=fair", "regularizer=lpreg,none", "sweep.n_trials=2", "sweep.seeds=[0]",
            "sweep.eval_seeds=[7]", *TINY, f"hydra.sweep.dir={sw}"]
    run_cli(args, cwd=tmp_path)
    info = json.loads((sw / "fair.json").read_text())
    storage = f"sqlite:///{sw}/fair.db"
    for arm in ("lpreg", "none"):
        study = optuna.load_study(study_name=f"fair_{arm}", storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2  # the same budget for each arm
        keys = set().union(*(t.params for t in study.trials))
        assert keys == ({"trainer.lr", "regularizer.kappa", "regularizer.rho", "regularizer.beta"} if arm == "lpreg"
                        else {"trainer.lr"})  # none tunes only what every arm tunes
        entry = info["arms"][arm]
        assert entry["best_trial"] == study.best_trial.number and entry["tuning_objective"] == study.best_value
        for t in study.trials:  # the same tuning seed for each arm
            assert json.loads((sw / f"tune_{arm}_trial_{t.number:04d}_s0" / "summary.json").read_text())["seed"] == 0
        fresh = json.loads((sw / f"eval_{arm}_s7" / "summary.json").read_text())
        assert fresh["status"] == "completed" and fresh["seed"] == 7 and fresh["regularizer"] == arm
        assert all(f"{k}={v}" in fresh["overrides"] for k, v in study.best_params.items())  # the winner, re-run

    kept = (sw / "eval_lpreg_s7" / "summary.json").read_bytes()
    (sw / "eval_none_s7" / "summary.json").unlink()  # as if killed during that fresh-seed run
    run_cli(args, cwd=tmp_path)  # the same command again: nothing repeated but the missing run
    for arm in ("lpreg", "none"):
        assert len(optuna.load_study(study_name=f"fair_{arm}", storage=storage).trials) == 2
    assert (sw / "eval_lpreg_s7" / "summary.json").read_bytes() == kept
    assert json.loads((sw / "eval_none_s7" / "summary.json").read_text())["status"] == "completed"

    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(sw), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = (out / "fair_table.md").read_text()
    assert "| lpreg | lr=" in table and "kappa=" in table and "fresh − none (paired)" in table
    assert (out / "fair_sensitivity.png").stat().st_size > 1000
    import pandas as pd

    results = pd.read_csv(out / "results_final.csv")  # fresh-seed runs only: one seed per arm, no tuning trial
    assert set(results.regularizer) == {"lpreg", "none"} and (results.seeds == 1).all()
