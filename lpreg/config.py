"""Structured configs: the one source of every configuration value, and the Hydra config groups built from them.

Each option of a config group is a dataclass registered in Hydra's ConfigStore under its user-facing name
(``model=tiny|hf``, ``task=arithmetic|math``, ``rollout=hf|vllm``, ``regularizer=<name>``); the dataclass defaults ARE
the option's values, each with its provenance in a comment. Regularizer schemas live beside their loss and come from
the regularizer registry (``lpreg/losses``). ``conf/config.yaml`` only picks the default options and Hydra's folders;
``conf/experiment/*.yaml`` and ``sweeps/*.yaml`` are named bundles of overrides. A typo (``trainer.stepz=3``) or a wrong
type (``trainer.steps=abc``) fails at composition with Hydra's message (``tests/test_config.py`` also checks that no
YAML restates a dataclass default and that every YAML key has a schema field).

Values sized for the embedded CPU testbed are marked with ``embedded(...)``: a run with a real model
(``model=hf``) that leaves any of them at its default is warned with the list (``embedded_values``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lpreg.data import MATH_DATA, MATH_EVAL_SETS

ROOT = Path(__file__).resolve().parents[1]


def embedded(default: Any, real: str) -> Any:
    """A default sized for the embedded CPU testbed; ``real`` says what the paper's real-model runs use."""
    return field(default=default, metadata={"embedded": real})


# ---- model --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """The embedded model: a 0.53 M-parameter Qwen2 with a character tokenizer, warmed up by a short supervised
    stage on the task's training split (run once, cached under ``cache_dir``). See lpreg/models.py."""

    kind: str = "tiny"
    vocab_size: int = 64
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 32
    warmup_steps: int = 700  # see lpreg/models.py::supervised_warmup for the measured accuracy
    warmup_lr: float = 1e-3
    warmup_batch_size: int = 128
    warmup_seed: int = 0
    cache_dir: str = "${oc.env:LPREG_CACHE_DIR,'~/.cache/lpreg'}"


@dataclass
class HFModelConfig:
    """Any Hugging Face causal LM: ``model=hf model.path=<hub id or local folder>``."""

    kind: str = "hf"
    path: str = MISSING  # hub id (must be in the local HF cache) or a folder saved with save_pretrained
    dtype: str = "bfloat16"  # compute dtype (autocast); the weights and AdamW state are always fp32 master copies
    trust_remote_code: bool = False  # never on unless the user sets it: it runs Python code shipped with the model
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
    """The embedded task: fixed-width two-digit addition, ``07+45=`` -> ``52<eos>``, exact-match reward."""

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
    """The paper's setting: DAPO-Math training prompts, five benchmarks, math-verify grading of boxed answers."""

    name: str = "math"
    # Shipped data (lpreg/data/math/README.md: provenance, licenses, sha256); ``pkg://`` = inside the installed
    # package, any other value a file path. ``python -m lpreg.data prepare`` downloads the full training set.
    train_file: str = f"{MATH_DATA}/dapo_math_train_2000.jsonl"  # 2,000-problem DAPO-Math-17k sample
    eval_files: list[str] = field(default_factory=lambda: [f"{MATH_DATA}/{s}.jsonl" for s in MATH_EVAL_SETS])
    max_train: int = 0  # 0 = all
    max_eval: int = 0  # per eval file; 0 = all
    sampled_sources: list[str] = field(default_factory=lambda: ["aime24", "aime25"])  # avg@16 at T=0.6 (paper §5.1.3)
    sampled_k: int = 16  # paper §5.1.3
    sampled_temperature: float = 0.6  # paper §5.1.3; the other sources are decoded greedily
    max_response_len: int = 8192  # recipe max_response_length


# ---- rollout --------------------------------------------------------------------------------------------------


@dataclass
class HFRolloutConfig:
    """Rollouts with Hugging Face generate (KV cache, sampling at temperature). CPU or GPU."""

    name: str = "hf"
    temperature: float = 1.0  # recipe temperature=1.0
    group_size: int = 8  # responses per prompt G (recipe n_resp_per_prompt=8)


@dataclass
class VLLMRolloutConfig(HFRolloutConfig):
    """Rollouts with vLLM (GPU; pip install -e '.[gpu]'). Weights are pushed to the engine after every update."""

    name: str = "vllm"
    gpu_memory_utilization: float = 0.4
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    max_model_len: int | None = None


# ---- trainer, eval, metrics, tracking -------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    steps: int = embedded(400, "1,000 (Qwen3-14B) / 800 (Qwen2.5-32B)")  # one step = one rollout batch
    prompts_per_step: int = embedded(32, "256 (recipe train_prompt_bsz)")
    # gradient steps per rollout; 1 = on-policy. The embedded default is mildly off-policy.
    mini_batches: int = embedded(2, "1 on-policy, 8 off-policy (recipe train_prompt_mini_bsz 256 / 32)")
    # padded tokens per forward/backward (gradient accumulation); 0 = one micro-batch per mini-batch. The loss is the
    # exact mini-batch aggregate whatever this is; Lp-Reg scope=micro_batch selects per micro-batch (the reference).
    max_tokens_per_micro_batch: int = 0
    lr: float = embedded(3e-4, "1e-6 (recipe)")  # 1e-3 destroyed the embedded policy (DESIGN.md §3)
    # Linear warm-up over this many rollout steps (lpreg/schedule.py; as verl's actor.optim.lr_warmup_steps).
    # 0 = off, the behaviour before issue 14: the embedded default's metrics are unchanged.
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0  # recipe weight_decay=0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas of the reference (fsdp_workers.py)
    grad_clip: float = 1.0  # recipe grad_clip=1.0
    max_bad_steps: int = 10  # consecutive rollout steps whose every update was skipped (non-finite) -> diverged
    checkpoint_every: int = 100  # 0 = only at the end
    num_threads: int = 0  # torch intra-op threads; 0 = all cores for a lone job, cores / n_jobs under joblib
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False  # continue from the latest checkpoint in the job folder
    token_chunk: int = 1024  # tokens per output-head chunk in the token pass (lpreg/tokens.py); 0 = all at once


@dataclass
class EvalConfig:
    every: int = embedded(50, "8 (recipe test_freq)")  # steps between held-out evaluations; 0 = only at the end
    at_start: bool = True  # evaluate the initial policy at step 0
    samples: int = embedded(4, "0: greedy only on MATH-500, Minerva, OlympiadBench")  # k of avg@k/pass@k, greedy sources
    temperature: float = 1.0
    batch_size: int = 512


@dataclass
class MetricsConfig:
    lowprob_threshold: float = 0.1  # policy/lowprob_frac counts sampled tokens with π_old(y) below this probability
    tail_kappa: float = 0.02  # κ of policy/tail_mass (the paper's min-p κ)
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
    # Optuna storage URL; unset: $LPREG_SWEEP_STORAGE (the way to give a URL with a password), else SQLite in the
    # sweep folder. Written masked wherever it is written (lpreg/redact.py).
    storage: str | None = None
    direction: str = "maximize"
    sampler_seed: int = 0
    sampler: str = "tpe"  # tpe | grid (every combination of categorical params once: an ablation)
    pruner: str = "none"  # none | median | hyperband (one seed per trial; any launcher: reports go through storage)
    params: dict[str, Any] = field(default_factory=dict)  # key -> {type: float|int|categorical, low, high, log, choices}
    trial: int | None = None  # set by the sweeper on each job: the Optuna trial number it evaluates
    # The fair comparison (issue 20, hydra_plugins/lpreg_sweeper/fair.py), on when eval_seeds is set: fresh seeds on
    # which each arm's best trial is re-run, and arm -> sweeps/<file> whose params that arm tunes besides sweep.params.
    eval_seeds: list[int] = field(default_factory=list)
    spaces: dict[str, str] = field(default_factory=dict)


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


GROUPS: dict[str, list[type]] = {
    "model": [TinyModelConfig, HFModelConfig],
    "task": [ArithmeticTaskConfig, MathTaskConfig],
    "rollout": [HFRolloutConfig, VLLMRolloutConfig],
}


def option_name(schema: type) -> str:
    """The user-facing option name of a group schema: its ``kind`` or ``name`` default."""
    fields = {f.name: f.default for f in dataclasses.fields(schema)}
    return fields.get("kind", fields.get("name"))


def register_configs() -> None:
    """Register the root schema, every group option and the ``sweep`` group (``sweeps/*.yaml``) with Hydra."""
    from lpreg.losses import REGULARIZERS

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in GROUPS.items():
        for schema in schemas:
            cs.store(group=group, name=option_name(schema), node=schema)
    for reg in REGULARIZERS.entries():
        cs.store(group="regularizer", name=reg.name, node=reg.config)
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def embedded_values(cfg: Config) -> list[str]:
    """``key=value (real scale: ...)`` for every value still at its embedded-testbed default (see ``embedded``)."""
    out = []
    for section in ("trainer", "eval", "regularizer", "task", "rollout"):
        node = getattr(cfg, section)
        for f in dataclasses.fields(node):
            real = f.metadata.get("embedded")
            if real is not None and getattr(node, f.name) == f.default:
                out.append(f"{section}.{f.name}={f.default} (real scale: {real})")
    return out
