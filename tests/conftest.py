"""Test isolation: no network, nothing written to the home folder, W&B disabled unless a test opts in."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Small, fast settings shared by the trainer tests (the tiny warm-up is cached once per session).
FAST = ["trainer.prompts_per_step=4", "trainer.mini_batches=2",
        "eval.samples=2", "eval.every=2", "trainer.checkpoint_every=2", "metrics.samples_every=2"]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("env")
    os.environ.update({
        "LPREG_CACHE_DIR": str(base / "cache"), "WANDB_MODE": "disabled", "WANDB_DIR": str(base / "wandb"),
        "WANDB_CONFIG_DIR": str(base / "wandb_cfg"), "WANDB_CACHE_DIR": str(base / "wandb_cache"),
        "WANDB_DATA_DIR": str(base / "wandb_data"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "WANDB_SILENT": "true", "HOME": str(base / "home"),
    })
    os.environ.pop("LPREG_SWEEP_STORAGE", None)  # the sweep storage comes from the command line in tests
    yield


def compose_cfg(overrides=()):
    """The resolved config object (as ``run.py`` builds it) for ``overrides``."""
    from lpreg.harness.config import compose_config

    return compose_config(overrides)


def run_cli(args, cwd, timeout=600, check=True):
    """``python -m lpreg.run ARGS`` in ``cwd``; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "lpreg.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and proc.returncode != 0:
        raise AssertionError(f"lpreg.run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
