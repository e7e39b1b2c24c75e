"""Config tier: every group option composes, registries equal config groups, typos fail at composition."""

import subprocess
import sys

import pytest
from conftest import ROOT, compose_cfg
from hydra.errors import ConfigCompositionException

from lpreg.config import REGULARIZER_SCHEMAS, options
from lpreg.losses import LOSSES
from lpreg.rollout import ROLLOUTS
from lpreg.tasks import TASKS


@pytest.mark.parametrize("group", ["model", "task", "rollout", "regularizer"])
def test_every_group_option_composes(group):
    extra = {"model": ["model.path=/nonexistent"]}
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", *(extra.get(group, []) if option == "hf" else [])])
        node = getattr(cfg, group)
        assert node is not None
        if group == "regularizer":
            assert node.name == option


def test_registries_mirror_config_groups():
    from lpreg.rollout import hf, vllm  # noqa: F401
    from lpreg.tasks import arithmetic, math  # noqa: F401

    assert LOSSES.names() == options("regularizer") == sorted(REGULARIZER_SCHEMAS)
    assert TASKS.names() == options("task")
    assert ROLLOUTS.names() == options("rollout")


def test_user_facing_overrides_and_types():
    cfg = compose_cfg(["seed=3", "trainer.steps=7", "regularizer=lpreg", "regularizer.rho=0.01", "task=arithmetic",
                       "model=tiny"])
    assert (cfg.seed, cfg.trainer.steps, cfg.regularizer.name, cfg.regularizer.rho) == (3, 7, "lpreg", 0.01)


@pytest.mark.parametrize("bad", ["trainer.stepz=3", "trainer.steps=abc", "regularizer.kappa=0.1",
                                 "regularizer=nope"])
def test_typos_and_wrong_types_fail_at_composition(bad):
    with pytest.raises(ConfigCompositionException):
        compose_cfg([bad])


def test_cli_rejects_a_typo_with_hydras_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lpreg.run", "trainer.stepz=3"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert proc.returncode != 0 and "stepz" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


def test_sweeps_compose():
    from hydra import compose, initialize_config_dir

    paths = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert {"lpreg_core", "entropy_coef", "clip_higher"} <= {p.stem for p in paths}
    for path in paths:
        cfg = compose_cfg([f"+sweep={path.stem}"])
        assert cfg.sweep.name == path.stem and cfg.sweep.params
        for key in cfg.sweep.params:  # every searched key exists in the composed config
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            full = compose(config_name="config", overrides=[f"+sweep={path.stem}"], return_hydra_config=True)
        assert full.hydra.sweeper._target_.endswith("LpregOptunaSweeper")
