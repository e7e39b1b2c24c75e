"""Hydra's side of lpreg's sweeps (``hydra/sweeper=lpreg_optuna``): turns ``python -m lpreg.run -m +sweep=<name>`` into
one study run through the study loop (``lpreg/harness/sweep.py``), or, when the sweep file sets ``sweep.protocol``,
the comparison protocol's stages (``lpreg/harness/protocol.py``).

Why our own sweeper: the ``hydra-optuna-sweeper`` 1.3 wheel pins ``optuna<3`` (and SQLAlchemy<2 for SQLite). This one
uses current Optuna through Hydra's Sweeper API, so ``-m`` multirun, launchers (basic, joblib, submitit) and config
composition keep working. The study is described by the job config's ``sweep`` node (``lpreg/sweeps/*.yaml``).

Storage: ``sweep.storage`` if set, else the environment variable ``LPREG_SWEEP_STORAGE``, else an SQLite file in the
sweep folder (any Optuna storage URL; PostgreSQL for several machines). A URL with a password belongs in the
environment variable; wherever the URL is written (``study.json``, logs) its password is masked (``lpreg/redact.py``).
A plain sweep's job folders are ``trial_<number>_s<seed>``; at the end it writes ``best.json`` and ``trials.csv``
(``analysis/plots.py`` on the folder draws the study).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class LpregOptunaSweeperConf:
    _target_: str = "hydra_plugins.lpreg_sweeper.optuna_sweeper.LpregOptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="lpreg_optuna", node=LpregOptunaSweeperConf,
                             provider="lpreg")


class LpregOptunaSweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from lpreg.harness.pruning import storage_url
        from lpreg.harness.sweep import StudySpec, job_overrides, report, run_study
        from lpreg.redact import mask_url

        sweep = self.config.get("sweep")
        if sweep is None or not (sweep.get("params") or sweep.get("protocol")):
            raise ValueError("hydra/sweeper=lpreg_optuna needs a study: add +sweep=<name> (files in lpreg/sweeps/)")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = storage_url(sweep, sweep_dir)
        if sweep.get("protocol"):
            from lpreg.harness.protocol import run_protocol

            return run_protocol(self.config, self.launcher, sweep_dir, storage, job_overrides(arguments))
        (sweep_dir / "study.json").write_text(json.dumps({"storage": mask_url(storage), "study_name": sweep.name}))
        spec = StudySpec(name=sweep.name, params={k: OmegaConf.to_container(v) for k, v in sweep.params.items()},
                         n_trials=sweep.n_trials, seeds=list(sweep.seeds),
                         # selection is on the validation split (a command line that names eval.split wins)
                         fixed=["eval.split=validation", *job_overrides(arguments)],
                         folder=lambda number, params, seed: f"trial_{number:04d}_s{seed}", sampler=sweep.sampler,
                         sampler_seed=sweep.sampler_seed, startup_trials=sweep.startup_trials,
                         direction=sweep.direction, enqueue=OmegaConf.to_container(sweep.enqueue))
        if sweep.pruner != "none" and len(sweep.seeds) != 1:
            log.warning("pruning needs one seed per trial: it is off for this sweep")
        study = run_study(spec, sweep, self.launcher, sweep_dir, storage)
        print(f"\nstudy {study.study_name}: {json.dumps(report(study, sweep_dir))}", flush=True)
