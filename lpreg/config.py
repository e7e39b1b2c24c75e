"""Structured configs: one dataclass per config-group option, registered in Hydra's ConfigStore.

A typo (``trainer.stepz=3``) or a wrong type (``trainer.steps=abc``) fails at composition with Hydra's message.
Each YAML under ``conf/<group>/`` extends its schema (``defaults: [schema_<name>, _self_]``); the YAMLs hold the
values, the dataclasses hold the types. ``sweeps/*.yaml`` are registered here as the ``sweep`` group, so that
``+sweep=<name>`` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

ROOT = Path(__file__).resolve().parents[1]


# ---- model --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    kind: str = "tiny"
    vocab_size: int = 64
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 32
    warmup_steps: int = 700
    warmup_lr: float = 1e-3
    warmup_batch_size: int = 128
    warmup_seed: int = 0
    cache_dir: str = "${oc.env:LPREG_CACHE_DIR,'~/.cache/lpreg'}"


@dataclass
class HFModelConfig:
    kind: str = "hf"
    path: str = MISSING  # hub id (must be in the local HF cache) or a folder saved with save_pretrained
    dtype: str = "bfloat16"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = True


# ---- task -----------------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Fields of every task: how its reward is graded (``lpreg/rewards.py``)."""

    name: str = MISSING
    # Grading worker processes; null = one per usable core (at most lpreg.rewards.MAX_AUTO_WORKERS);
    # 0 = in the trainer process, with no hard time budget (cheap rewards that cannot hang, and debugging).
    reward_workers: int | None = None
    # Hard wall-clock seconds per response in a worker; over it the response scores 0 (train/reward_timeouts).
    # Measured with `benchmarks/rewards.py budget` on this 2-core machine: all 3,507 gold answers of the six shipped
    # files, each boxed as is, in an equivalent form and against another problem's gold (10,505 gradings), took at
    # most 2.46 s at load average 10 (1.80 s at load 3-7; p99.9 1.0 s, median 1.4 ms). 3 s keeps every one of them
    # and stays below math-verify's own 5 s, which pathological answers reach.
    reward_timeout_s: float = 3.0
    # LRU entries of (digest of task.reward_key -> reward): 65,536 holds 32 steps of 2,048 distinct answers in
    # 10.6 MB (measured with tracemalloc). 0 = off (every response graded).
    reward_cache_size: int = 65536


@dataclass
class ArithmeticTaskConfig(TaskConfig):
    name: str = "arithmetic"
    # Exact string match, graded in process. Measured (benchmarks/rewards.py arithmetic, 2 cores under load): one
    # step's 256 responses take 0.09 ms in process and 12-66 ms through a 1-2 worker pool, against a step of
    # ~150 ms (the default run: 400 steps in ~60 s).
    reward_workers: int | None = 0
    digits: int = 2
    n_test: int = 500
    seed: int = 1234  # fixes the train/test split; independent of the run seed
    max_response_len: int = 4


@dataclass
class MathTaskConfig(TaskConfig):
    name: str = "math"
    train_file: str = MISSING
    eval_files: list[str] = field(default_factory=list)
    max_train: int = 0  # 0 = all
    max_eval: int = 0  # per eval file; 0 = all
    sampled_sources: list[str] = field(default_factory=lambda: ["aime24", "aime25"])
    sampled_k: int = 16
    sampled_temperature: float = 0.6
    max_response_len: int = 8192


# ---- rollout --------------------------------------------------------------------------------------------------


@dataclass
class HFRolloutConfig:
    name: str = "hf"
    temperature: float = 1.0
    group_size: int = 8


@dataclass
class VLLMRolloutConfig:
    name: str = "vllm"
    temperature: float = 1.0
    group_size: int = 8
    gpu_memory_utilization: float = 0.4
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    max_model_len: int | None = None


# ---- regularizers (one per conf/regularizer option) ------------------------------------------------------------


@dataclass
class PPOClip:
    name: str = MISSING
    clip_low: float = 0.2
    clip_high: float = 0.2


@dataclass
class NoneReg(PPOClip):
    name: str = "none"


@dataclass
class ClipHigherReg(PPOClip):
    name: str = "clip_higher"
    clip_high: float = 0.28


@dataclass
class EntropyReg(PPOClip):
    name: str = "entropy"
    entropy_coef: float = 0.002


@dataclass
class LpRegReg(PPOClip):
    name: str = "lpreg"
    kappa: float = 0.02
    mode: str = "minp"
    rho: float = 0.01
    beta: float = 1.0
    clip_low: float = 1.0
    clip_high: float = 9.0
    scope: str = "minibatch"
    rho_pos: float = 0.0
    divergence: str = "k3"


@dataclass
class KLCovReg:
    name: str = "kl_cov"
    k_percent: float = 0.2
    kl_coef: float = 1.0


@dataclass
class ClipCovReg(PPOClip):
    name: str = "clip_cov"
    clip_ratio: float = 0.0002
    cov_lb: float = 1.0
    cov_ub: float = 5.0
    clip_low: float = 1.0
    clip_high: float = 1.0


@dataclass
class HighEntReg(PPOClip):
    name: str = "highent_8020"
    top_frac: float = 0.2


@dataclass
class GSPOReg(PPOClip):
    name: str = "gspo"
    clip_low: float = 3e-4
    clip_high: float = 4e-4
    loss_agg: str = "seq-mean-token-mean"


REGULARIZER_SCHEMAS = {"none": NoneReg, "clip_higher": ClipHigherReg, "entropy": EntropyReg, "lpreg": LpRegReg,
                       "kl_cov": KLCovReg, "clip_cov": ClipCovReg, "highent_8020": HighEntReg, "gspo": GSPOReg}


# ---- trainer, eval, metrics, tracking -------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    steps: int = 400  # one step = one rollout batch (the paper's step)
    prompts_per_step: int = 32
    mini_batches: int = 2  # gradient steps per rollout; 1 = on-policy (the embedded default is mildly off-policy)
    micro_batch_size: int = 0  # sequences per forward/backward (gradient accumulation); 0 = whole mini-batch
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    max_bad_steps: int = 10  # consecutive rollout steps whose every update was skipped (non-finite) -> diverged
    checkpoint_every: int = 100  # 0 = only at the end
    # torch intra-op threads; 0 = auto: all cores for a lone job, cores / n_jobs under hydra/launcher=joblib.
    # Measured on 2 cores: a lone run takes 0.35 s/step with 2 threads and ~0.5 s/step with 1.
    num_threads: int = 0
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False  # continue from the latest checkpoint in the job folder
    logits_chunk: int = 4096  # rows per chunk for full-vocabulary work (proxy, entropy)


@dataclass
class EvalConfig:
    every: int = 50  # steps between held-out evaluations; 0 = only at the end
    at_start: bool = True  # evaluate the initial policy at step 0
    samples: int = 4  # k for avg@k / pass@k on greedy sources; 0 = greedy only
    temperature: float = 1.0
    batch_size: int = 512


@dataclass
class MetricsConfig:
    lowprob_threshold: float = 0.1  # policy/lowprob_frac counts sampled tokens with π_old(y) below this
    tail_kappa: float = 0.02  # κ of policy/tail_mass
    sparks: dict[str, list[str]] = field(default_factory=dict)  # name -> tokens for sparks/<name>/prob
    hist_bins: int = 20  # sampled-probability histogram bins on [0, 1]
    samples_every: int = 50  # steps between tables of sample completions; 0 = off
    samples_n: int = 8


@dataclass
class WandbConfig:
    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline | online | disabled
    project: str = "lpreg"
    entity: str | None = None
    group: str | None = None  # default: the study name of a sweep, else the multirun folder (date/time)
    tags: list[str] = field(default_factory=list)


@dataclass
class ObjectiveConfig:
    metric: str = "eval/mean"  # the value a sweep maximizes
    mode: str = "final"  # final | best | last_mean (mean of the last ``last_n`` evaluations)
    last_n: int = 3


@dataclass
class SweepConfig:
    """An Optuna study run by ``hydra/sweeper=lpreg_optuna`` (see ``sweeps/*.yaml``)."""

    name: str = MISSING  # study name; the sweep folder and default SQLite file are named after it
    n_trials: int = 10  # new trials per invocation (a second invocation resumes and adds as many)
    batch_size: int = 1  # trials launched together (in parallel with hydra/launcher=joblib)
    seeds: list[int] = field(default_factory=lambda: [0])  # each trial's objective is the mean over these seeds
    storage: str | None = None  # Optuna storage URL; default sqlite in the sweep folder
    direction: str = "maximize"
    sampler_seed: int = 0
    pruner: str = "none"  # none | median | hyperband (in-process jobs, one seed per trial)
    params: dict[str, Any] = field(default_factory=dict)  # key -> {type: float|int|categorical, low, high, log, choices}


@dataclass
class Config:
    seed: int = 0
    model: Any = MISSING
    task: Any = MISSING
    rollout: Any = MISSING
    regularizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sweep: SweepConfig | None = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="schema_tiny", node=TinyModelConfig)
    cs.store(group="model", name="schema_hf", node=HFModelConfig)
    cs.store(group="task", name="schema_arithmetic", node=ArithmeticTaskConfig)
    cs.store(group="task", name="schema_math", node=MathTaskConfig)
    cs.store(group="rollout", name="schema_hf", node=HFRolloutConfig)
    cs.store(group="rollout", name="schema_vllm", node=VLLMRolloutConfig)
    for name, schema in REGULARIZER_SCHEMAS.items():
        cs.store(group="regularizer", name=f"schema_{name}", node=schema)
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def options(group: str) -> list[str]:
    """The user-facing options of a config group (its YAML files)."""
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
