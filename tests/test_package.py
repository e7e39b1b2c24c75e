"""The package is whole: a wheel built from the source tree, installed elsewhere, runs the embedded default and a
sweep from any folder (its Hydra configs, sweep files, shipped warm-ups and data are package data)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_built_wheel_runs_the_default_and_a_sweep_from_another_folder(tmp_path):
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("lpreg-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    # the installed copy, not the source tree: nothing on the path points at ROOT
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import lpreg, hydra_plugins.lpreg_sweeper as s; "
                            "print(lpreg.__file__); print(s.__file__)"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
    assert where.returncode == 0 and all(line.startswith(str(target)) for line in where.stdout.split()), where
    run = subprocess.run([sys.executable, "-m", "lpreg.run", "trainer.steps=2", "trainer.prompts_per_step=4",
                          "eval.every=2", "eval.samples=0", "hydra.run.dir=run"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((work / "run" / "summary.json").read_text())["status"] == "completed"
    sweep = subprocess.run([sys.executable, "-m", "lpreg.run", "-m", "+sweep=clip_higher", "sweep.n_trials=1",
                            "sweep.startup_trials=0", "trainer.steps=1", "trainer.prompts_per_step=4", "eval.every=1",
                            "eval.samples=0", "hydra.sweep.dir=sw"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert json.loads((work / "sw" / "best.json").read_text())["n_trials"]["COMPLETE"] == 1
