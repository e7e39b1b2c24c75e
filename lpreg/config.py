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

from lpreg.checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, PROBABILITY, Range, check_ranges, ranged, ranged_list
from lpreg.data import MATH_DATA, MATH_EVAL_SETS

ROOT = Path(__file__).resolve().parents[1]


def embedded(default: Any, real: str, allowed: Range | None = None) -> Any:
    """A default sized for the embedded CPU testbed; ``real`` says what the paper's real-model runs use;
    ``allowed`` the value's range (``lpreg/checks.py``)."""
    return field(default=default, metadata={"embedded": real, **({"range": allowed} if allowed else {})})


# ---- model --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """The embedded model: a 0.53 M-parameter Qwen2 with a character tokenizer, warmed up by a short supervised
    stage on the task's training split (run once, cached under ``cache_dir``). See lpreg/models.py."""

    kind: str = "tiny"
    vocab_size: int = ranged(64, Range(2))
    hidden_size: int = ranged(128, AT_LEAST_1)
    intermediate_size: int = ranged(512, AT_LEAST_1)
    num_layers: int = ranged(2, AT_LEAST_1)
    num_heads: int = ranged(4, AT_LEAST_1)
    max_positions: int = ranged(32, AT_LEAST_1)
    warmup_steps: int = ranged(700, NON_NEGATIVE)  # see lpreg/models.py::supervised_warmup for the measured accuracy
    warmup_lr: float = ranged(1e-3, POSITIVE)
    warmup_batch_size: int = ranged(128, AT_LEAST_1)
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
    reward_workers: int | None = ranged(None, NON_NEGATIVE)
    # Hard wall-clock seconds per response in a worker; over it the response scores 0 (train/reward_timeouts).
    # Measured with `benchmarks/rewards.py budget` on this 2-core machine: all 3,507 gold answers of the six shipped
    # files, each boxed as is, in an equivalent form and against another problem's gold (10,505 gradings), took at
    # most 2.46 s at load average 10 (1.80 s at load 3-7; p99.9 1.0 s, median 1.4 ms). 3 s keeps every one of them
    # and stays below math-verify's own 5 s, which pathological answers reach.
    reward_timeout_s: float = ranged(3.0, POSITIVE)
    # LRU entries of (digest of task.reward_key -> reward): 65,536 holds 32 steps of 2,048 distinct answers in
    # 10.6 MB (measured with tracemalloc). 0 = off (every response graded).
    reward_cache_size: int = ranged(65536, NON_NEGATIVE)
    # prompt tokens; longer prompts lose their start (recipe max_prompt_length, truncation=left)
    max_prompt_len: int = ranged(2048, AT_LEAST_1)


@dataclass
class ArithmeticTaskConfig(TaskConfig):
    """The embedded task: fixed-width two-digit addition, ``07+45=`` -> ``52<eos>``, exact-match reward."""

    name: str = "arithmetic"
    # Exact string match, graded in process. Measured (benchmarks/rewards.py arithmetic, 2 cores under load): one
    # step's 256 responses take 0.09 ms in process and 12-66 ms through a 1-2 worker pool, against a training
    # step of 0.53-0.64 s (min-median, 1 thread, load average 13-15: benchmarks/vs_trl.md).
    reward_workers: int | None = ranged(0, NON_NEGATIVE)
    digits: int = ranged(2, AT_LEAST_1)
    n_test: int = ranged(500, AT_LEAST_1)
    seed: int = 1234  # fixes the train/test split; independent of the run seed
    max_response_len: int = ranged(4, AT_LEAST_1)


@dataclass
class MathTaskConfig(TaskConfig):
    """The paper's setting: DAPO-Math training prompts, five benchmarks, math-verify grading of boxed answers."""

    name: str = "math"
    # Shipped data (lpreg/data/math/README.md: provenance, licenses, sha256); ``pkg://`` = inside the installed
    # package, any other value a file path. ``python -m lpreg.data prepare`` downloads the full training set.
    train_file: str = f"{MATH_DATA}/dapo_math_train_2000.jsonl"  # 2,000-problem DAPO-Math-17k sample
    eval_files: list[str] = field(default_factory=lambda: [f"{MATH_DATA}/{s}.jsonl" for s in MATH_EVAL_SETS])
    max_train: int = ranged(0, NON_NEGATIVE)  # 0 = all
    max_eval: int = ranged(0, NON_NEGATIVE)  # per eval file; 0 = all
    sampled_sources: list[str] = field(default_factory=lambda: ["aime24", "aime25"])  # avg@16 at T=0.6 (paper §5.1.3)
    sampled_k: int = ranged(16, AT_LEAST_1)  # paper §5.1.3
    sampled_temperature: float = ranged(0.6, POSITIVE)  # paper §5.1.3; the other sources are decoded greedily
    max_response_len: int = ranged(8192, AT_LEAST_1)  # recipe max_response_length


# ---- rollout --------------------------------------------------------------------------------------------------


@dataclass
class HFRolloutConfig:
    """Rollouts with Hugging Face generate (KV cache, sampling at temperature). CPU or GPU."""

    name: str = "hf"
    temperature: float = ranged(1.0, POSITIVE)  # recipe temperature=1.0
    # responses per prompt G (recipe n_resp_per_prompt=8); a group advantage needs at least two
    group_size: int = ranged(8, Range(2))
    logprobs: bool = True  # record the engine's sampled-token log-probs: rollout/logprob_diff_* against the trainer's
    # Truncated importance sampling (TRL's vllm_importance_sampling_correction, verl's rollout_is): each token's
    # advantage is multiplied by min(π_old(y)/π_rollout(y), tis_cap); null = off (the reference has none).
    tis_cap: float | None = ranged(None, POSITIVE)


@dataclass
class VLLMRolloutConfig(HFRolloutConfig):
    """Rollouts with vLLM (GPU; pip install -e '.[gpu]'), colocated: weights pushed by name after every update."""

    name: str = "vllm"
    # Fraction of the GPU's total memory vLLM may take when awake (TRL's default 0.3, verl's recipe 0.85 with sleep).
    gpu_memory_utilization: float = ranged(0.4, Range(0, 1, lo_open=True))
    dtype: str = "bfloat16"  # the engine's weights (recipe rollout dtype bf16)
    enforce_eager: bool = False  # False = CUDA graphs on (vLLM's default); the reference ran eager (verl's default)
    sleep: bool = True  # free the engine's GPU memory during the log-prob pass and the update (level-2 sleep)
    # null = the longest prompt (task.max_prompt_len) + task.max_response_len
    max_model_len: int | None = ranged(None, AT_LEAST_1)


# ---- trainer, eval, metrics, tracking -------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    steps: int = embedded(400, "1,000 (Qwen3-14B) / 800 (Qwen2.5-32B)", AT_LEAST_1)  # one step = one rollout batch
    prompts_per_step: int = embedded(32, "256 (recipe train_prompt_bsz)", AT_LEAST_1)
    # gradient steps per rollout; 1 = on-policy. The embedded default is mildly off-policy.
    mini_batches: int = embedded(2, "1 on-policy, 8 off-policy (recipe train_prompt_mini_bsz 256 / 32)", AT_LEAST_1)
    # padded tokens per forward/backward (gradient accumulation); 0 = one micro-batch per mini-batch. The loss is the
    # exact mini-batch aggregate whatever this is; Lp-Reg scope=micro_batch selects per micro-batch (the reference).
    max_tokens_per_micro_batch: int = ranged(0, NON_NEGATIVE)
    lr: float = embedded(3e-4, "1e-6 (recipe)", POSITIVE)  # 1e-3 destroyed the embedded policy (DESIGN.md §3)
    # Linear warm-up over this many rollout steps (lpreg/schedule.py; as verl's actor.optim.lr_warmup_steps).
    # 0 = off, the behaviour before issue 14: the embedded default's metrics are unchanged.
    lr_warmup_steps: int = ranged(0, NON_NEGATIVE)
    weight_decay: float = ranged(0.0, NON_NEGATIVE)  # recipe weight_decay=0
    # AdamW betas of the reference (fsdp_workers.py)
    betas: list[float] = ranged_list(lambda: [0.9, 0.999], Range(0, 1, hi_open=True))
    grad_clip: float = ranged(1.0, POSITIVE)  # recipe grad_clip=1.0
    # consecutive rollout steps whose every update was skipped (non-finite) -> diverged
    max_bad_steps: int = ranged(10, AT_LEAST_1)
    checkpoint_every: int = ranged(100, NON_NEGATIVE)  # and at the last step; 0 = no checkpoint at all
    # torch intra-op threads; 0 = all cores for a lone job, cores / n_jobs under joblib
    num_threads: int = ranged(0, NON_NEGATIVE)
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False  # continue from the latest checkpoint in the job folder
    # resume even if the job folder's checkpoint was written with another config (the differing keys are listed)
    resume_force: bool = False
    # checkpoints kept in the job folder: 2 = the newest and the one before, so a damaged newest one still leaves
    # one to resume from (lpreg/checkpoint.py); the old one is deleted only once the new one is written and verified
    keep_checkpoints: int = ranged(2, AT_LEAST_1)
    # tokens per output-head chunk in the token pass (lpreg/tokens.py); 0 = all at once
    token_chunk: int = ranged(1024, NON_NEGATIVE)


@dataclass
class EvalConfig:
    # steps between held-out evaluations, also at the last step; 0 = none after step 0 (training-only steps)
    every: int = embedded(50, "8 (recipe test_freq)", NON_NEGATIVE)
    at_start: bool = True  # evaluate the initial policy at step 0
    # k of avg@k/pass@k, greedy sources
    samples: int = embedded(4, "0: greedy only on MATH-500, Minerva, OlympiadBench", NON_NEGATIVE)
    temperature: float = ranged(1.0, POSITIVE)
    batch_size: int = ranged(512, AT_LEAST_1)


@dataclass
class MetricsConfig:
    # policy/lowprob_frac counts sampled tokens with π_old(y) below this probability
    lowprob_threshold: float = ranged(0.1, PROBABILITY)
    # κ of policy/tail_mass (the paper's min-p κ)
    tail_kappa: float = ranged(0.02, Range(0, 1, lo_open=True, hi_open=True))
    sparks: dict[str, list[str]] = field(default_factory=dict)  # name -> tokens for sparks/<name>/prob
    hist_bins: int = ranged(20, AT_LEAST_1)  # sampled-probability histogram bins on [0, 1]
    samples_every: int = ranged(50, NON_NEGATIVE)  # steps between tables of sample completions; 0 = off
    samples_n: int = ranged(8, NON_NEGATIVE)


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
    last_n: int = ranged(3, AT_LEAST_1)


@dataclass
class SweepConfig:
    """An Optuna study run by ``hydra/sweeper=lpreg_optuna`` (see ``sweeps/*.yaml``)."""

    name: str = MISSING  # study name; the sweep folder and default SQLite file are named after it
    n_trials: int = ranged(10, AT_LEAST_1)  # new trials per invocation (a second invocation resumes and adds as many)
    batch_size: int = ranged(1, AT_LEAST_1)  # trials launched together (in parallel with hydra/launcher=joblib)
    seeds: list[int] = field(default_factory=lambda: [0])  # each trial's objective is the mean over these seeds
    # Optuna storage URL; unset: $LPREG_SWEEP_STORAGE (the way to give a URL with a password), else SQLite in the
    # sweep folder. Written masked wherever it is written (lpreg/redact.py).
    storage: str | None = None
    direction: str = "maximize"
    sampler_seed: int = 0
    sampler: str = "tpe"  # tpe | grid (every combination of categorical params once: an ablation)
    pruner: str = "none"  # none | median | hyperband (one seed per trial; any launcher: reports go through storage)
    params: dict[str, Any] = field(default_factory=dict)  # key -> {type: float|int|categorical, low, high, log, choices}
    # Trials left RUNNING by a dead sweeper process: each running trial's heartbeat is recorded every
    # ``heartbeat_s``; one silent for ``grace_s`` is marked FAIL when a sweep starts and retried up to
    # ``max_retries`` times (Optuna's RetryFailedTrialCallback). 60/180 s: Optuna's documented example values.
    heartbeat_s: int = ranged(60, AT_LEAST_1)
    grace_s: int = ranged(180, AT_LEAST_1)
    max_retries: int = ranged(0, NON_NEGATIVE)
    trial: int | None = None  # set by the sweeper on each job: the Optuna trial number it evaluates
    # The fair comparison (issue 20, hydra_plugins/lpreg_sweeper/fair.py), on when eval_seeds is set: fresh seeds on
    # which each arm's best trial is re-run, and arm -> sweeps/<file> whose params that arm tunes besides sweep.params.
    eval_seeds: list[int] = field(default_factory=list)
    spaces: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    seed: int = 0
    # The run's arm in summaries, tables and figures (default: the regularizer's name). Set by conf/arm/<name>.yaml,
    # so that two arms of one regularizer (the embedded study's entropy bonus at two coefficients) stay apart.
    arm: str | None = None
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

    def __post_init__(self) -> None:
        # OmegaConf.to_object builds this object: every declared range is checked here, before any work
        check_ranges(self)


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
