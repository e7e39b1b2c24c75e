"""Run one lpreg job on verl: ``train(cfg, job_dir, tracker, resume, on_eval)``, the native trainer's signature.

``python -m lpreg.run backend=verl experiment=qwen3_14b_on regularizer=lpreg`` calls :func:`train`, which

1. composes and checks verl's trainer config (``lpreg/verl/config.py``: verl's validation, our refusals and the
   memory estimate) and the environment (vLLM and TransferQueue installed, no trl that breaks verl's engine),
   before anything is written or launched;
2. writes the task as parquet (``lpreg/verl/data.py``) and the composed config to ``<job>/verl/``;
3. runs verl in a child process (``python -m lpreg.verl.launch <job>/verl/config.yaml``, its output in
   ``<job>/verl/verl.log``): verl's own ``run_ppo`` with :class:`LpregTaskRunner`, verl's v1 task runner whose
   trainer places lpreg's actor worker (``lpreg/verl/extension.py``) where verl places its own;
4. follows verl's file logger (``<job>/verl/metrics.jsonl``) while it runs and logs every step through the run's
   tracker under lpreg's names (``lpreg/verl/readback.py``), calling ``on_eval`` after each evaluation (the
   sweeper's pruning: a pruned trial stops the verl job);
5. returns ``{"evals": [...], "last": {...}}`` for ``summary.json``.

A job of several nodes runs on an existing Ray cluster (``backend.ray_address``; ``ray start`` on each node first);
``trainer.resume=true`` resumes verl from its own checkpoints in ``<job>/verl/checkpoints`` (verl's
``resume_mode=auto``). A failed verl job raises with the tail of its log.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
POLL_S = 2.0
TAIL_LINES = 40


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def environment_problems() -> list[str]:
    """What this Python environment lacks for a verl run (each with its fix); empty when it has everything."""
    from importlib.util import find_spec

    problems = [f"{module} is not installed ({fix})" for module, fix in (
        ("vllm", "pip install -e '.[verl-gpu]' on a GPU machine"), ("transfer_queue", "pip install -e '.[verl]'"))
        if find_spec(module) is None]
    if find_spec("trl") is not None:
        try:
            import trl
        except ImportError as err:
            problems.append(f"trl cannot be imported ({err})")
        else:
            if not hasattr(trl, "AutoModelForCausalLMWithValueHead"):
                problems.append(f"trl {trl.__version__} is installed: verl's FSDP engine imports "
                                "trl.AutoModelForCausalLMWithValueHead when trl is present, which this trl no longer "
                                "has (pip uninstall trl in the verl environment)")
    return problems


def train(cfg, job_dir: Path, tracker, resume=None, on_eval=None) -> dict:
    """Run ``cfg`` on verl (module docstring); same signature and return value as the native trainer's."""
    from omegaconf import OmegaConf

    from lpreg.verl import config as vconf
    from lpreg.verl import data
    from lpreg.verl.readback import Follower, translate

    vc, est = vconf.build(cfg, job_dir)
    if problems := environment_problems():
        raise RuntimeError("this environment cannot run verl:\n  " + "\n  ".join(problems))
    log.info("verl run: per GPU %.1f GiB in the update, %.1f GiB while vLLM generates (estimate; GPU %g GiB)",
             est.train / vconf.GIB, est.rollout / vconf.GIB, cfg.backend.gpu_memory_gib)
    run = Path(job_dir) / "verl"
    data.write_parquet(cfg.task, run / "data")
    cfg_path, metrics_path, log_path = run / "config.yaml", run / "metrics.jsonl", run / "verl.log"
    OmegaConf.save(vc, cfg_path)
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics_path)}
    updates, protocol = cfg.trainer.mini_batches, cfg.backend.eval_protocol
    evals: list[dict] = []
    last: dict[str, float] = {}
    follower = Follower(metrics_path)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lpreg.verl.launch", str(cfg_path)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                done = proc.poll() is not None
                for record in follower.new_records():
                    step, metrics, ev = translate(record, updates, protocol)
                    if ev:
                        evals.append({"step": step, **ev})
                        if on_eval is not None:
                            on_eval(step, ev)
                    if metrics or ev:
                        tracker.log(metrics | ev, step)
                    if metrics:
                        last = metrics | ev
                if done:
                    break
                time.sleep(POLL_S)
        finally:
            _stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"verl exited with status {proc.returncode}; its log is {log_path}:\n{_tail(log_path)}")
    return {"evals": evals, "last": last}


# ---- the child process: verl itself ------------------------------------------------------------------------------


def trainer_class(base):
    """verl's trainer class ``base`` with lpreg's actor worker in the actor roles."""
    import ray
    from verl.trainer.ppo.utils import Role

    from lpreg.verl.extension import LpregActorRolloutRefWorker

    class LpregTrainer(base):
        def _init_resource_pool_mgr(self):
            super()._init_resource_pool_mgr()
            for role in (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef):
                if role in self.role_worker_mapping:
                    self.role_worker_mapping[role] = ray.remote(LpregActorRolloutRefWorker)

    LpregTrainer.__name__ = LpregTrainer.__qualname__ = f"Lpreg{base.__name__}"
    return LpregTrainer


def _runner_class():
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import TaskRunnerV1

    class LpregTaskRunner(TaskRunnerV1.__ray_actor_class__):
        """verl's ``TaskRunnerV1`` whose ``run`` builds :func:`trainer_class` of the configured trainer (the rest
        of ``run`` as verl's)."""

        def run(self, config):
            from pprint import pprint

            import transfer_queue as tq
            from verl.trainer.ppo.v1 import get_trainer_cls
            from verl.utils.logging_utils import configure_verl_logging

            configure_verl_logging()
            trainer_cls = trainer_class(get_trainer_cls(config.trainer.v1.trainer_mode))
            config.transfer_queue.enable = True
            pprint(OmegaConf.to_container(config, resolve=True))
            OmegaConf.resolve(config)
            self.config = config
            tq.init(config.transfer_queue)
            succeeded = False
            try:
                self.trainer = trainer_cls(config=config)
                self.trainer.init()
                self.init_agent_loop_manager()
                self.trainer.fit(self.agent_loop_manager)
                succeeded = True
            finally:
                try:
                    tracking = getattr(self.trainer, "logger", None)
                    if tracking is not None:
                        tracking.finish(exit_code=0 if succeeded else 1)
                finally:
                    tq.close()

    LpregTaskRunner.__qualname__ = "LpregTaskRunner"  # pickled by reference: this module's __getattr__ builds it
    return LpregTaskRunner


def __getattr__(name: str):
    if name == "LpregTaskRunner":  # built on first use: it subclasses verl's task runner
        cls = _runner_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def main(argv: list[str]) -> None:
    """``python -m lpreg.verl.launch CONFIG.yaml``: verl's ``main_ppo`` for lpreg's composed config."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.device import auto_set_device

    from lpreg.verl import config as vconf

    if len(argv) != 1:
        raise SystemExit("usage: python -m lpreg.verl.launch <job>/verl/config.yaml")
    vc = OmegaConf.load(argv[0])
    auto_set_device(vc)
    vconf.validate(vc)
    path = os.environ.get("VERL_FILE_LOGGER_PATH")
    if path:  # the task runner is a Ray actor: hand it the file logger's path through Ray's runtime env
        env_vars = OmegaConf.select(vc, "ray_kwargs.ray_init.runtime_env.env_vars", default=None) or {}
        OmegaConf.update(vc, "ray_kwargs.ray_init.runtime_env.env_vars",
                         {**OmegaConf.to_container(OmegaConf.create(env_vars)), "VERL_FILE_LOGGER_PATH": path},
                         force_add=True)
    import ray

    run_ppo(vc, task_runner_class=ray.remote(__getattr__("LpregTaskRunner")))


if __name__ == "__main__":
    main(sys.argv[1:])
