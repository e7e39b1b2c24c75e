"""Config tier: every group option composes, registries equal config groups, one source of values, typos fail."""

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, compose_cfg
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING

from lpreg.core.losses import REGULARIZERS
from lpreg.harness.config import GROUPS, Config, register_configs
from lpreg.native.rollout import ROLLOUTS
from lpreg.tasks import TASKS


def options(group: str) -> list[str]:
    """The options Hydra offers for ``group`` (ConfigStore and any YAML file under lpreg/conf/<group>/)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "lpreg" / "conf"), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


@pytest.mark.parametrize("group", ["model", "task", "rollout", "regularizer"])
def test_every_group_option_composes(group):
    extra = {"model": ["model.path=/nonexistent"]}
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", *(extra.get(group, []) if option == "hf" else [])])
        node = getattr(cfg, group)
        assert node is not None
        if group == "regularizer":
            assert node.name == option and isinstance(node, REGULARIZERS.get(option).config)


def test_registries_mirror_config_groups():
    from lpreg.native.rollout import hf, vllm  # noqa: F401
    from lpreg.tasks import arithmetic, countdown, math, spark  # noqa: F401

    assert REGULARIZERS.names() == options("regularizer")
    assert TASKS.names() == options("task")
    assert ROLLOUTS.names() == options("rollout")
    assert not [o for g in ("model", "task", "rollout", "regularizer") for o in options(g) if o.startswith("schema")]


def _schema_fields(schema) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def _walk(node, schema, path, found):
    """(key path, value, schema field) for every leaf of a YAML mapping checked against a dataclass schema."""
    fields = _schema_fields(schema)
    for key, value in node.items():
        assert key in fields, f"{path}{key} has no schema field in {schema.__name__}"
        f = fields[key]
        if isinstance(value, dict) and dataclasses.is_dataclass(_default(f)):
            _walk(value, type(_default(f)), f"{path}{key}.", found)
        else:
            found.append((f"{path}{key}", value, f))


def yaml_values(path) -> list[tuple[str, object, dataclasses.Field]]:
    """Leaves of a config YAML (without ``defaults``/``hydra``) with their schema fields; fails on an unknown key."""
    data = yaml.safe_load(path.read_text()) or {}
    data = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
    found: list = []
    groups = {"regularizer": {r.name: r.config for r in REGULARIZERS.entries()}}
    for key, value in data.items():
        if key in ("model", "task", "rollout", "regularizer") and isinstance(value, dict):
            schemas = groups.get(key) or {s.__name__: s for s in GROUPS[key]}
            ok = [s for s in schemas.values() if set(value) <= set(_schema_fields(s))]
            assert ok, f"{path.name}: {key}.{sorted(value)} fits no {key} option"
            _walk(value, ok[0], f"{key}.", found)
        else:
            _walk({key: value}, Config, "", found)
    return found


def test_each_value_is_stated_once_and_every_yaml_key_has_a_schema_field():
    config_yaml = ROOT / "lpreg" / "conf" / "config.yaml"
    restated = [(k, v) for k, v, f in yaml_values(config_yaml) if _default(f) is not MISSING]
    assert not restated, f"lpreg/conf/config.yaml restates dataclass defaults: {restated}"
    conf = ROOT / "lpreg" / "conf"
    for path in sorted([*(conf / "experiment").glob("*.yaml"), *(conf / "arm").glob("*.yaml")]):
        yaml_values(path)  # every key of an experiment or arm file is a schema field
    for path in sorted((ROOT / "lpreg" / "conf" / "experiment_reg").glob("*/*.yaml")):  # regularizer values of an experiment
        fields = _schema_fields(REGULARIZERS.get(path.stem).config)
        assert set(yaml.safe_load(path.read_text())) <= set(fields), path
        assert (ROOT / "lpreg" / "conf" / "experiment" / f"{path.parent.name}.yaml").exists(), path
    for reg in REGULARIZERS.entries():  # each regularizer's values live in its schema, with a default for each
        assert all(_default(f) is not MISSING for f in dataclasses.fields(reg.config)), reg.name


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "lpreg" / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_with_every_regularizer(name):
    from lpreg.harness.config import embedded_values

    real = name.startswith("qwen")  # the others are named setups of the embedded testbed
    for reg in REGULARIZERS.names():
        cfg = compose_cfg([f"experiment={name}", f"regularizer={reg}"])
        if real:
            assert cfg.model.kind == "hf" and cfg.task.name == "math" and cfg.trainer.lr == 1e-6
            assert not embedded_values(cfg), (name, reg, embedded_values(cfg))  # nothing sized for the testbed left
    if real:
        assert compose_cfg([f"experiment={name}", "regularizer=lpreg"]).regularizer.rho in (0.01, 0.005)


def test_arms_select_their_regularizer_and_label():
    """lpreg/conf/arm/<name>.yaml picks a regularizer (and values); ``arm`` names the run only where two arms share one."""
    arms = sorted(p.stem for p in (ROOT / "lpreg" / "conf" / "arm").glob("*.yaml"))
    study = yaml.safe_load((ROOT / "lpreg" / "conf" / "experiment" / "embedded_study.yaml").read_text())
    assert set(study["hydra"]["sweeper"]["params"]["arm"].split(",")) <= set(arms)  # the study's arms are arm files
    for name in arms:
        cfg = compose_cfg([f"arm={name}"])
        assert (cfg.arm or cfg.regularizer.name) == name
    large = compose_cfg(["arm=entropy_large"]).regularizer
    assert large.name == "entropy" and large.entropy_coef > 10 * compose_cfg(["arm=entropy"]).regularizer.entropy_coef
    assert compose_cfg([]).arm is None


def test_user_facing_overrides_and_types():
    cfg = compose_cfg(["seed=3", "trainer.steps=7", "regularizer=lpreg", "regularizer.rho=0.01", "task=arithmetic",
                       "model=tiny"])
    assert (cfg.seed, cfg.trainer.steps, cfg.regularizer.name, cfg.regularizer.rho) == (3, 7, "lpreg", 0.01)


@pytest.mark.parametrize("bad", ["trainer.stepz=3", "trainer.steps=abc", "regularizer.kappa=0.1",
                                 "regularizer=nope", "regularizer=schema_lpreg"])
def test_typos_and_wrong_types_fail_at_composition(bad):
    with pytest.raises(ConfigCompositionException):
        compose_cfg([bad])


def test_cli_rejects_a_typo_with_hydras_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lpreg.run", "trainer.stepz=3"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert proc.returncode != 0 and "stepz" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


def test_embedded_values_are_listed_for_a_real_model():
    from lpreg.harness.config import embedded_values

    still = embedded_values(compose_cfg(["model=hf", "model.path=/x", "regularizer=lpreg"]))
    assert any(s.startswith("trainer.lr=7.5e-05") for s in still) and any(s.startswith("regularizer.rho=") for s in still)
    changed = compose_cfg(["model=hf", "model.path=/x", "regularizer=lpreg", "trainer.lr=1e-6", "regularizer.rho=0.01"])
    assert not [s for s in embedded_values(changed) if s.startswith(("trainer.lr=", "regularizer.rho="))]


def test_sweeps_compose():
    from hydra import compose, initialize_config_dir

    paths = sorted((ROOT / "lpreg" / "sweeps").glob("*.yaml"))
    assert {"lpreg_core", "entropy_coef", "clip_higher"} <= {p.stem for p in paths}
    for path in paths:
        cfg = compose_cfg([f"+sweep={path.stem}"])
        assert cfg.sweep.name == path.stem and (cfg.sweep.params or cfg.sweep.protocol)
        for key in cfg.sweep.params:  # every searched key exists in the composed config
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
        with initialize_config_dir(config_dir=str(ROOT / "lpreg" / "conf"), version_base="1.3"):
            full = compose(config_name="config", overrides=[f"+sweep={path.stem}"], return_hydra_config=True)
        assert full.hydra.sweeper._target_.endswith("LpregOptunaSweeper")
