"""The one study loop (lpreg/harness/sweep.py) with a launcher stand-in that writes each job's summary: the sampler a
sweep names is the one that runs, grids are covered once, seeds are per study, a killed sweeper leaves nothing RUNNING
and loses or repeats no trial; and the comparison protocol's stages (lpreg/harness/protocol.py) on the same stand-in."""

import json
import math
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from lpreg.harness.config import ProtocolConfig, SweepConfig
from lpreg.harness.protocol import ProtocolError, check, run_protocol
from lpreg.harness.sweep import OWNER, StudySpec, check_spec, claimed, run_study, study_seed


class Launcher:
    """Runs nothing: writes each job's summary.json with an objective computed from its overrides by ``score``
    (a dict of override values -> float), and records the jobs. ``die_after`` raises after that many jobs, as if the
    sweeper were killed while its jobs ran (the summaries of the jobs that finished stay)."""

    def __init__(self, sweep_dir: Path, score, die_after: int | None = None):
        self.dir, self.score, self.die_after, self.jobs = sweep_dir, score, die_after, []

    def launch(self, jobs, initial_job_idx):
        for overrides in jobs:
            if self.die_after is not None and len(self.jobs) >= self.die_after:
                raise KeyboardInterrupt("killed")
            values = dict(o.split("=", 1) for o in overrides)
            folder = self.dir / values["hydra.sweep.subdir"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps({"status": "completed", "seed": int(values.get("seed", 0)),
                                                             "objective": self.score(values)}))
            self.jobs.append(values)


def sweep_node(**kw):
    return OmegaConf.merge(OmegaConf.structured(SweepConfig(name="s")), kw)


def spec(**kw):
    base = dict(name="s", params={"x": {"type": "float", "low": 0.0, "high": 1.0}}, n_trials=6, seeds=[0],
                fixed=[], folder=lambda n, v, s: f"trial_{n:04d}_s{s}", sampler="tpe", startup_trials=3)
    return StudySpec(**{**base, **kw})


def test_grid_runs_every_point_exactly_once(tmp_path):
    params = {"a": {"type": "categorical", "choices": [1, 2, 3]}, "b": {"type": "categorical", "choices": ["u", "v"]}}
    launcher = Launcher(tmp_path, lambda v: float(v["a"]))
    study = run_study(spec(params=params, n_trials=6, sampler="grid"), sweep_node(sampler="grid"), launcher, tmp_path,
                      f"sqlite:///{tmp_path}/s.db")
    points = sorted((t.params["a"], t.params["b"]) for t in study.trials)
    assert points == sorted((a, b) for a in (1, 2, 3) for b in ("u", "v"))
    assert isinstance(study.sampler, optuna.samplers.GridSampler)
    with pytest.raises(ValueError, match="visits each of its 6 points once; set sweep.n_trials=6"):
        check_spec(spec(params=params, n_trials=8, sampler="grid"))


@pytest.mark.parametrize(("kind", "cls"), [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler)])
def test_the_named_sampler_runs(tmp_path, kind, cls):
    study = run_study(spec(sampler=kind), sweep_node(), Launcher(tmp_path, lambda v: -abs(float(v["x"]) - 0.3)),
                      tmp_path, f"sqlite:///{tmp_path}/s.db")
    assert isinstance(study.sampler, cls) and len(study.trials) == 6
    if kind == "tpe":
        assert study.sampler._n_startup_trials == 3  # TPE models the other 3
    with pytest.raises(ValueError, match="leave TPE nothing to model"):
        check_spec(spec(startup_trials=6))


def test_each_study_has_its_own_sampler_seed_and_reruns_reproduce(tmp_path):
    assert study_seed(0, "A_lpreg") != study_seed(0, "A_none") and study_seed(0, "x") == study_seed(0, "x")
    draws = []
    for name, folder in (("p", "one"), ("q", "two"), ("p", "three")):
        d = tmp_path / folder
        d.mkdir()
        study = run_study(spec(name=name, sampler="random"), sweep_node(), Launcher(d, lambda v: 0.0), d,
                          f"sqlite:///{d}/s.db")
        draws.append([t.params["x"] for t in study.trials])
    assert draws[0] != draws[1] and draws[0] == draws[2]


def test_the_same_command_again_finishes_a_study_and_adds_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    first = Launcher(tmp_path, lambda v: 0.5)
    run_study(spec(n_trials=4), sweep_node(), first, tmp_path, url)
    again = Launcher(tmp_path, lambda v: 0.5)
    study = run_study(spec(n_trials=4), sweep_node(), again, tmp_path, url)
    assert len(study.trials) == 4 and again.jobs == []
    study = run_study(spec(n_trials=6), sweep_node(), again, tmp_path, url)  # a larger total adds the difference
    assert len(study.trials) == 6 and len(again.jobs) == 2
    assert len({t.params["x"] for t in study.trials}) == 6  # the resumed study sampled new points


def test_a_killed_sweeper_leaves_nothing_running_and_loses_or_repeats_no_trial(tmp_path, monkeypatch):
    import lpreg.harness.sweep as sweep_module

    url = f"sqlite:///{tmp_path}/s.db"
    dead = {"pid": 1, "host": "h", "start": 1}
    monkeypatch.setattr(sweep_module, "identity", lambda: dead)
    two = spec(n_trials=4, seeds=[0, 1])
    node = sweep_node(batch_size=2)
    with pytest.raises(KeyboardInterrupt):  # dies after the first trial's two jobs and one job of the second
        run_study(two, node, Launcher(tmp_path, lambda v: float(v["x"]), die_after=3), tmp_path, url)
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"]
    done_first = {p: p.stat().st_mtime_ns for p in tmp_path.glob("trial_0000_s*/summary.json")}
    monkeypatch.setattr(sweep_module, "process_gone", lambda owner: owner == dead)
    monkeypatch.setattr(sweep_module, "identity", lambda: {"pid": 2, "host": "h", "start": 2})
    resumed = Launcher(tmp_path, lambda v: float(v["x"]))
    study = run_study(two, node, resumed, tmp_path, url)
    trials = study.trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert trials[0].state.name == "COMPLETE"  # all its jobs had ended: told, not repeated
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["retried"]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == trials[1].params and retry.state.name == "COMPLETE"  # cut: asked again, same values
    assert claimed(study) == 4 and sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert all(p.stat().st_mtime_ns == m for p, m in done_first.items())
    assert not any(j["sweep.trial"] == "0" for j in resumed.jobs)
    assert trials[0].user_attrs[OWNER] == dead


def test_a_trial_cut_in_the_last_batch_is_run_again(tmp_path, monkeypatch):
    """The kill hits the study's last batch: the re-enqueued copy must still run (it waits; it is not yet a trial)."""
    import lpreg.harness.sweep as sweep_module

    url = f"sqlite:///{tmp_path}/s.db"
    dead = {"pid": 1, "host": "h", "start": 1}
    monkeypatch.setattr(sweep_module, "identity", lambda: dead)
    last = spec(n_trials=2, seeds=[0, 1], sampler="random")
    with pytest.raises(KeyboardInterrupt):  # both trials in one batch; the second loses its second job
        run_study(last, sweep_node(batch_size=2), Launcher(tmp_path, lambda v: float(v["x"]), die_after=3), tmp_path,
                  url)
    monkeypatch.setattr(sweep_module, "process_gone", lambda owner: owner == dead)
    monkeypatch.setattr(sweep_module, "identity", lambda: {"pid": 2, "host": "h", "start": 2})
    resumed = Launcher(tmp_path, lambda v: float(v["x"]))
    study = run_study(last, sweep_node(batch_size=2), resumed, tmp_path, url)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"] and claimed(study) == 2
    assert study.trials[2].params == study.trials[1].params and len(resumed.jobs) == 2  # the cut trial, both seeds


def protocol_cfg(tmp_path, **kw):
    p = OmegaConf.structured(ProtocolConfig(arms=["lpreg", "none"], lr_grid=[1e-4, 2e-4, 4e-4, 8e-4],
                                            grid_seeds=[0, 1, 2], tune_trials=3, tune_seeds=[0],
                                            test_seeds=list(range(100, 113))))
    p = OmegaConf.merge(p, kw)
    return OmegaConf.create({"sweep": {**OmegaConf.to_container(sweep_node(name="proto", startup_trials=1)),
                                       "protocol": OmegaConf.to_container(p)},
                             "objective": {"metric": "eval/mean", "mode": "final"},
                             "trainer": {"steps": 5}, "eval": {"every": 5}, "task": {"name": "spark"}})


def test_the_protocols_own_rules_and_departures_from_its_standard():
    base = OmegaConf.merge(sweep_node(), {"protocol": OmegaConf.structured(ProtocolConfig())})
    assert check(base) == []  # the defaults meet the standard: 4 grid values, 3 seeds a cell, 10 trials, 13 seeds
    for changes, message in [({"protocol": {"lr_grid": [1e-4, 2e-4, 3e-4, 4e-4]}}, "must be log-spaced"),
                             ({"protocol": {"test_seeds": [0, 100, 101]}}, "reuses tuning seeds [0]"),
                             ({"protocol": {"primary": "gspo"}}, "is not one of the arms"),
                             ({"direction": "minimize"}, "objective to maximize"),
                             ({"pruner": "median"}, "set sweep.pruner=none"),
                             ({"startup_trials": 9}, "leaves TPE nothing to model")]:
        with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check(OmegaConf.merge(base, changes))
    short = check(OmegaConf.merge(base, {"protocol": {"lr_grid": [1e-4, 2e-4, 4e-4], "grid_seeds": [0, 1],
                                                      "test_seeds": [100]}}))
    assert short == ["sweep.protocol.lr_grid: 3, below the protocol's standard of 4",
                     "sweep.protocol.grid_seeds: 2, below the protocol's standard of 3",
                     "sweep.protocol.test_seeds: 1, below the protocol's standard of 13"]


def score(values):
    """A stand-in objective: the learning rate's best value is 2e-4 for every arm; Lp-Reg's kappa helps a little."""
    lr = float(values["trainer.lr"])
    bonus = 0.05 * float(values.get("regularizer.kappa", 0.02)) if values.get("regularizer") == "lpreg" else 0.0
    return 0.7 - abs(math.log(lr / 2e-4)) / 10 + bonus + 0.001 * int(values.get("seed", 0)) % 3


def test_protocol_stages_same_draws_selection_on_validation_and_preregistration(tmp_path):
    cfg = protocol_cfg(tmp_path)
    launcher = Launcher(tmp_path, score)
    url = f"sqlite:///{tmp_path}/proto.db"
    record = run_protocol(cfg, launcher, tmp_path, url, ["+sweep=protocol"])
    a = {arm: sorted(float(j["trainer.lr"]) for j in launcher.jobs
                     if j["sweep.name"] == f"proto_A_{arm}" and j["seed"] == "0") for arm in ("lpreg", "none")}
    assert a["lpreg"] == a["none"] == [1e-4, 2e-4, 4e-4, 8e-4]  # stage A: the same draws for every arm
    stage_a = [j for j in launcher.jobs if j["sweep.name"].startswith("proto_A_")]
    assert all(j["eval.split"] == "validation" for j in stage_a) and len(stage_a) == 2 * 4 * 3
    assert record["arms"]["none"]["stage_a"]["lr"] == 2e-4 and record["arms"]["lpreg"]["stage_a"]["extended"] is None
    b = [j for j in launcher.jobs if j["sweep.name"] == "proto_B_lpreg"]
    assert len(b) == 3 and float(b[0]["regularizer.kappa"]) == 0.02  # trial 0: the arm's default, enqueued
    assert all(float(j["trainer.lr"]) == 2e-4 and j["eval.split"] == "validation" for j in b)
    assert record["arms"]["lpreg"]["stage_b"]["default_value"] is not None
    c = [j for j in launcher.jobs if j["sweep.name"].startswith("proto_C_")]
    assert sorted(int(j["seed"]) for j in c if j["regularizer"] == "none") == list(range(100, 113))
    assert all(j["eval.split"] == "test" for j in c)
    assert record["baseline"] == "none" and record["preregistration"]["primary"]["arm"] == "lpreg"
    again = Launcher(tmp_path, score)
    run_protocol(cfg, again, tmp_path, url, ["+sweep=protocol"])  # resumed: nothing left to run
    assert again.jobs == []
    changed = protocol_cfg(tmp_path, tune_trials=4)
    with pytest.raises(ProtocolError, match="pre-registered with other values \\(.*tune_trials"):
        run_protocol(changed, again, tmp_path, url, ["+sweep=protocol"])


def test_a_best_learning_rate_at_an_end_of_the_grid_extends_it_once(tmp_path):
    cfg = protocol_cfg(tmp_path, lr_grid=[2e-4, 4e-4, 8e-4, 1.6e-3], arms=["none", "lpreg"])
    record = run_protocol(cfg, Launcher(tmp_path, score), tmp_path, f"sqlite:///{tmp_path}/p.db", [])
    ext = record["arms"]["none"]["stage_a"]["extended"]
    assert ext["at"] == "low" and ext["lr"] == pytest.approx(1e-4)
    assert record["arms"]["none"]["stage_a"]["lr"] == 2e-4  # the extension was tried and was not better


@pytest.mark.parametrize("sweep_file, overrides", [
    ("protocol", []),
    ("protocol_paper", ["backend=verl", "experiment=qwen3_14b_on"]),
])
def test_the_shipped_protocol_files_follow_the_protocols_standard(sweep_file, overrides):
    from conftest import compose_cfg

    from lpreg.harness.protocol import own_space

    cfg = compose_cfg([f"+sweep={sweep_file}", *overrides])
    p = cfg.sweep.protocol
    assert check(cfg.sweep) == []  # no departure: 4+ learning rates, 3 seeds a cell, 10 trials, 13 fresh seeds
    for arm in p.arms:  # every arm's own space exists and leaves the shared learning rate to stage A
        assert "trainer.lr" not in own_space(p.spaces, arm)
    assert set(p.spaces) == {a for a in p.arms if a != "none"}


def test_stage_b_default_is_the_value_a_run_of_the_experiment_composes():
    from lpreg.harness.protocol import default_point, own_space

    space = own_space({"lpreg": "lpreg_core_paper"}, "lpreg")
    assert default_point("lpreg", space, "qwen3_14b_on")["regularizer.rho"] == 0.01  # experiment_reg's value
    assert default_point("lpreg", space, "qwen25_32b_on")["regularizer.rho"] == 0.005
    assert default_point("lpreg", own_space({"lpreg": "lpreg_core"}, "lpreg"))["regularizer.rho"] == 0.05  # embedded
