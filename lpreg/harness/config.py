"""Structured configs: the one source of every configuration value, and the Hydra config groups built from them.

Each option of a config group is a dataclass registered in Hydra's ConfigStore under its user-facing name
(``model=tiny|hf``, ``task=arithmetic|math``, ``rollout=hf|vllm``, ``regularizer=<name>``); the dataclass defaults ARE
the option's values, each with its provenance in a comment. Regularizer schemas live beside their loss and come from
the regularizer registry (``lpreg/core/losses``). ``lpreg/conf/config.yaml`` only picks the default options and
Hydra's folders; ``lpreg/conf/experiment/*.yaml`` and ``lpreg/sweeps/*.yaml`` are named bundles of overrides. A typo
(``trainer.stepz=3``) or a wrong type (``trainer.steps=abc``) fails at composition with Hydra's message.

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

from lpreg.checks import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    ConfigValueError,
    Range,
    check_fields,
    choice,
    embedded,
    ranged,
    ranged_list,
)
from lpreg.core.losses import REGULARIZERS
from lpreg.data import MATH_DATA, MATH_EVAL_SETS
from lpreg.harness.pruning import PRUNERS
from lpreg.harness.summary import OBJECTIVE_MODES
from lpreg.harness.sweep import DIRECTIONS, SAMPLERS
from lpreg.harness.tracking import WANDB_MODES
from lpreg.native.device import DEVICES, DTYPES
from lpreg.tasks import EVAL_SPLITS
from lpreg.tasks.spark import MODES as SPARK_MODES
from lpreg.verl.config import BACKENDS

PACKAGE = Path(__file__).resolve().parents[1]  # the lpreg package folder (installed or in the source tree)
CONF = PACKAGE / "conf"  # Hydra's config folder: config.yaml, experiment/, arm/ (package data)
SWEEPS = PACKAGE / "sweeps"  # one Optuna study per file (package data)


# ---- model --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """The embedded model: a 0.53 M-parameter Qwen2 with a character tokenizer, warmed up by a short supervised
    stage on the task's training split (run once, cached under ``cache_dir``). See lpreg/native/models.py."""

    kind: str = "tiny"
    vocab_size: int = ranged(64, Range(2))
    hidden_size: int = ranged(128, AT_LEAST_1)
    intermediate_size: int = ranged(512, AT_LEAST_1)
    num_layers: int = ranged(2, AT_LEAST_1)
    num_heads: int = ranged(4, AT_LEAST_1)
    max_positions: int = ranged(32, AT_LEAST_1)
    # The supervised warm-up (lpreg/native/models.py): the task's phases (task.warmup_*) from the random init of
    # base_seed, shared by every run seed; then a seeded stage of seed_steps steps.
    base_seed: int = 0
    seed_steps: int = ranged(100, NON_NEGATIVE)  # the seeded stage; 0 = every seed starts from the shared phases
    warmup_seed: int = "${seed}"  # the seeded stage's: the run's own by default
    cache_dir: str = "${oc.env:LPREG_CACHE_DIR,'~/.cache/lpreg'}"


@dataclass
class HFModelConfig:
    """Any Hugging Face causal LM: ``model=hf model.path=<hub id or local folder>``."""

    kind: str = "hf"
    path: str = MISSING  # hub id (must be in the local HF cache) or a folder saved with save_pretrained
    dtype: str = choice("bfloat16", DTYPES)  # compute dtype (autocast); weights and AdamW state stay fp32
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
    # most 2.46 s at load average 10 (1.80 s at load 3-7; p99.9 1.0 s, median 1.4 ms); remeasured at load 4.5-5.0:
    # 2.21 s, and 1.90 s with the math task's screen and time limits (parse_timeout_s, verify_timeout_s), which end
    # most slow answers before this budget. Heavier load can push the slowest one past it (the `{\dfrac...}` form of
    # a 210-character Minerva expression, whose parse alone took 2.9-3.1 s at load 4.6-5.9): throughput runs at load
    # 5.5-6.1 saw the budget cut 1-2 of 2,048 legitimate responses (Minerva expressions in that form) in a few pool
    # rows, on the old grading path and the new.
    reward_timeout_s: float = ranged(3.0, POSITIVE)
    # Wall-clock seconds for one grading call (a step's responses, or one evaluation batch); null = no deadline. Once
    # passed, responses not yet sent to a worker score 0 (train/reward_deadline_cut) and those being graded finish
    # within reward_timeout_s, so a step's grading costs at most this + reward_timeout_s (+ a worker's replacement).
    # A last resort, far above legitimate grading: 2,048 legitimate math responses took 16 s with 2 workers on an
    # idle 2-core machine and 106 s serially at load average 10 (benchmarks/README.md).
    reward_batch_deadline_s: float | None = ranged(300.0, POSITIVE)
    # LRU entries of (digest of task.reward_key -> reward): 65,536 holds 32 steps of 2,048 distinct answers in
    # 10.6 MB (measured with tracemalloc). 0 = off (every response graded).
    reward_cache_size: int = ranged(65536, NON_NEGATIVE)
    # prompt tokens; longer prompts lose their start (recipe max_prompt_length, truncation=left)
    max_prompt_len: int = ranged(2048, AT_LEAST_1)


@dataclass
class WarmupTaskConfig(TaskConfig):
    """Fields of a task the embedded model is warmed up on (lpreg/native/models.py): its base phase's schedule."""

    warmup_steps: int = ranged(700, NON_NEGATIVE)  # supervised steps from the random init (batches of the below)
    warmup_lr: float = ranged(1e-3, POSITIVE)  # AdamW, 30 steps of linear warm-up, then constant
    warmup_batch_size: int = ranged(128, AT_LEAST_1)


@dataclass
class ArithmeticTaskConfig(WarmupTaskConfig):
    """The embedded task: fixed-width two-digit addition, ``07+45=`` -> ``52<eos>``, exact-match reward."""

    name: str = "arithmetic"
    # Exact string match, graded in process. Measured (benchmarks/rewards.py arithmetic, 2 cores under load): one
    # step's 256 responses take 0.09 ms in process and 12-66 ms through a 1-2 worker pool, against a training
    # step of 0.53-0.64 s (min-median, 1 thread, load average 13-15: benchmarks/vs_trl.md).
    reward_workers: int | None = ranged(0, NON_NEGATIVE)
    digits: int = ranged(2, AT_LEAST_1)
    n_test: int = ranged(500, AT_LEAST_1)  # held-out problems for reporting
    n_validation: int = ranged(500, AT_LEAST_1)  # held-out problems for tuning and selection
    seed: int = 1234  # fixes the train/validation/test split; independent of the run seed
    max_response_len: int = ranged(4, AT_LEAST_1)


@dataclass
class SparkTaskConfig(WarmupTaskConfig):
    """Addition with a rare spark token that opens a scratchpad mode (lpreg/tasks/spark.py), exact-match reward."""

    name: str = "spark"
    reward_workers: int | None = ranged(0, NON_NEGATIVE)  # an exact string match, graded in process (as arithmetic)
    # 3 with a 4,000-step base phase: the direct mode learns to about 70%; 2: to 90%+ (no room above it); 4: not at all
    # in 1,500 steps (README, "The spark task")
    digits: int = ranged(3, AT_LEAST_1)
    spark_mode: str = choice("columns", SPARK_MODES)  # what the spark opens: column sums, or the answer reversed
    # The warm-up (measured in the README, "The spark task"): a base phase that learns the direct mode with the spark
    # on spark_demos of the demonstrations, then a practice phase that also practises the spark mode, after a spark
    # given in the prompt, on spark_practice of them. spark_demos=0: the control variant where the spark starts extinct;
    # both 0: the variant without a spark mode at all.
    warmup_steps: int = ranged(4000, NON_NEGATIVE)  # 3-digit addition's loss starts to fall at about 1,700 steps
    warmup_lr: float = ranged(2e-3, POSITIVE)
    # p(spark) at the decision point after the warm-up: about spark_demos / (1 - spark_practice), 1-4% measured
    spark_demos: float = ranged(0.01, PROBABILITY)
    practice_steps: int = ranged(2000, NON_NEGATIVE)
    spark_practice: float = ranged(0.7, PROBABILITY)
    # of the practice demonstrations, the share that stops after the column sums (each with a second one that reads the
    # answer off the sums given in the prompt): the mode is whole but rarely finishes, a defect RL can mend
    spark_unfinished: float = ranged(0.9, PROBABILITY)
    n_test: int = ranged(500, AT_LEAST_1)  # held-out problems for reporting
    n_validation: int = ranged(500, AT_LEAST_1)  # held-out problems for tuning and selection
    n_forced: int = ranged(200, NON_NEGATIVE)  # held-out problems also scored with the spark forced (diagnostic)
    max_problems: int = ranged(100_000, Range(3))  # operand pairs drawn (all of them when there are fewer)
    seed: int = 1234  # fixes the splits and the warm-up's spark demonstrations; independent of the run seed
    max_response_len: int = ranged(15, AT_LEAST_1)  # the longest 3-digit spark response, end token included
    # train on the prompts with the spark forced (the spark mode practised by RL, every rollout in it): measures the
    # mode's ceiling, read off eval/spark_forced (README, "The spark task"); the decision-point metrics then read the
    # token after the spark
    train_forced: bool = False


@dataclass
class CountdownTaskConfig(WarmupTaskConfig):
    """A mini-Countdown (lpreg/tasks/countdown.py): reach the target with the numbers, + - * /, each number once."""

    name: str = "countdown"
    reward_workers: int | None = ranged(0, NON_NEGATIVE)  # a short exact parse, graded in process
    n_numbers: int = ranged(3, Range(2, 4))  # 4 numbers: 7,680 expressions per problem to enumerate
    max_number: int = ranged(9, Range(1, 99))
    max_target: int = ranged(50, AT_LEAST_1)
    max_problems: int = ranged(100_000, Range(3))  # problems drawn (all of them when there are fewer)
    n_validation: int = ranged(100, AT_LEAST_1)
    n_test: int = ranged(100, AT_LEAST_1)  # few: breadth is measured with many samples each (eval.samples up to 256)
    seed: int = 1234  # fixes the problems and their splits; independent of the run seed
    max_response_len: int = ranged(12, AT_LEAST_1)  # the longest 3-number solution, end token included


@dataclass
class MathTaskConfig(TaskConfig):
    """The paper's setting: DAPO-Math training prompts, five benchmarks, math-verify grading of boxed answers."""

    name: str = "math"
    # Shipped data (lpreg/data/math/README.md: provenance, licenses, sha256); ``pkg://`` = inside the installed
    # package, any other value a file path. ``python -m lpreg.data prepare`` downloads the full training set.
    train_file: str = f"{MATH_DATA}/dapo_math_train_2000.jsonl"  # 2,000-problem DAPO-Math-17k sample
    eval_files: list[str] = field(default_factory=lambda: [f"{MATH_DATA}/{s}.jsonl" for s in MATH_EVAL_SETS])
    max_train: int = ranged(0, NON_NEGATIVE)  # 0 = all (after the validation problems are held out)
    # training-file problems held out for tuning and selection; 0 = none (eval.split=validation is then refused)
    n_validation: int = ranged(200, NON_NEGATIVE)
    max_eval: int = ranged(0, NON_NEGATIVE)  # per eval file; 0 = all
    sampled_sources: list[str] = field(default_factory=lambda: ["aime24", "aime25"])  # avg@16 at T=0.6 (paper §5.1.3)
    sampled_k: int = ranged(16, AT_LEAST_1)  # paper §5.1.3
    sampled_temperature: float = ranged(0.6, POSITIVE)  # paper §5.1.3; the other sources are decoded greedily
    max_response_len: int = ranged(8192, AT_LEAST_1)  # recipe max_response_length
    # The screen (lpreg/tasks/screen.py): a boxed answer over any of these scores 0 before anything parses it
    # (train/reward_rejected). Each bound is the maximum over every shipped gold answer (raw, as loaded, in the
    # benchmark's boxed forms, and every rewrite scripts/gold_sweep.py grades: 28,517 answers), times a wide margin;
    # `python benchmarks/rewards.py budget` prints those maxima beside the bounds.
    screen_max_chars: int = ranged(2000, AT_LEAST_1)  # gold max 483 (sympy's LaTeX of 16 triples); x4
    screen_max_non_ascii: int = ranged(20, NON_NEGATIVE)  # gold max 0; room for a model's π, √, ° or −
    screen_max_digits: int = ranged(100, AT_LEAST_1)  # gold max 28 (sympy's 1000000000000000000000000000); x3.5
    # gold max 5; x2 only, since the parser's time grows steeply with nesting (parentheses around a number, idle
    # machine: 10 deep 0.7 s, 20 deep 1.9 s; 40 nested \sin( reach math-verify's 5 s)
    screen_max_depth: int = ranged(10, AT_LEAST_1)
    screen_max_exponent_height: int = ranged(3, AT_LEAST_1)  # gold max 1 (no gold stacks exponents); 2^{2^{2}} passes
    screen_max_exponent: float = ranged(1e5, POSITIVE)  # gold max 1009 (2^{1009}); x100
    screen_max_factorial: float = ranged(1e4, POSITIVE)  # gold max 100 (100!); x100, also \binom and \Gamma
    screen_max_entries: int = ranged(100, AT_LEAST_1)  # gold max 4 (2x2 matrices); a 10x10 matrix passes
    # math-verify's own time limits, whole seconds (signal.alarm: they act in a main thread only, i.e. in the pool's
    # workers and in-process grading from the main thread); its defaults are 5 s each. `benchmarks/rewards.py budget`
    # on the 2-core machine (load average 4.6): parsing a legitimate answer took up to 2.94 s (the `{\dfrac...}` form
    # of a 210-character Minerva gold; 3.06 s in a second run at load 5.9), so the parse limit stays at the pool's
    # budget, where it cuts nothing the budget would keep. Verifying a correct answer took at most 0.16 s, while
    # answers slow for sympy (e.g. (x+1)^{1000}: 5 s) spend their time there; 1 s ends them well before the budget (a
    # timed-out comparison scores 0, as a wrong answer does anyway). With both, the gold sweep grades as before.
    parse_timeout_s: int = ranged(3, AT_LEAST_1)  # per math_verify.parse call: the gold and the answer apart
    verify_timeout_s: int = ranged(1, AT_LEAST_1)  # per comparison inside math_verify.verify


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
    dtype: str = choice("bfloat16", DTYPES)  # the engine's weights (recipe rollout dtype bf16)
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
    # Embedded: measured on the staged warm-up (README, "What you see"): 400 steps at 3e-4 took held-out accuracy from
    # 0.30 to 0.07, at 7.5e-5 to 0.46; the comparison protocol's stage A put every arm's best rate at its grid's low end.
    lr: float = embedded(7.5e-5, "1e-6 (recipe)", POSITIVE)
    # Linear warm-up over this many rollout steps (lpreg/native/schedule.py; as verl's actor.optim.lr_warmup_steps);
    # 0 = off.
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
    device: str = choice("auto", DEVICES)
    resume: bool = False  # continue from the latest checkpoint in the job folder
    # resume even if the job folder's checkpoint was written with another config (the differing keys are listed)
    resume_force: bool = False
    # checkpoints kept in the job folder: 2 = the newest and the one before, so a damaged newest one still leaves one
    # to resume from (lpreg/native/checkpoint.py); the old one is deleted only once the new one is written and verified
    keep_checkpoints: int = ranged(2, AT_LEAST_1)
    # tokens per output-head chunk in the token pass (lpreg/native/tokens.py); 0 = all at once
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
    # which held-out problems are scored: validation (tuning and selection) or test (reporting); summary.json says
    split: str = choice("test", EVAL_SPLITS)


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
    acted_tokens_n: int = ranged(64, NON_NEGATIVE)  # rows per step of the acted_tokens table; 0 = off


@dataclass
class WandbConfig:
    mode: str = choice("${oc.env:WANDB_MODE,offline}", WANDB_MODES)  # default: $WANDB_MODE, else offline
    project: str = "lpreg"
    entity: str | None = None
    group: str | None = None  # default: the study name of a sweep, else the multirun folder (date/time)
    tags: list[str] = field(default_factory=list)


@dataclass
class ObjectiveConfig:
    metric: str = "eval/mean"  # the value a sweep maximizes
    mode: str = choice("final", OBJECTIVE_MODES)  # last_mean: the mean of the last ``last_n`` evaluations
    last_n: int = ranged(3, AT_LEAST_1)


@dataclass
class ProtocolConfig:
    """The comparison protocol (lpreg/harness/protocol.py): the same chance for every arm, selection on validation,
    the result on fresh seeds and the test split, and a contrast named before anything runs."""

    arms: list[str] = field(default_factory=lambda: ["lpreg", "entropy", "clip_higher", "none"])
    # arm -> lpreg/sweeps/<file> whose params the arm tunes in stage B; an arm without one has nothing to tune
    spaces: dict[str, str] = field(default_factory=lambda: {"lpreg": "lpreg_core", "entropy": "entropy_coef",
                                                            "clip_higher": "clip_higher"})
    # Stage A: every arm's learning rate on the same log-spaced grid (at least 4 values), each cell on grid_seeds
    # embedded: the grid the README's protocol ran (its stage A extended it once below, to 3.75e-5, for every arm)
    lr_grid: list[float] = ranged_list(lambda: [7.5e-5, 1.5e-4, 3e-4, 6e-4], POSITIVE)
    grid_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    extend_grid: bool = True  # an arm whose best value is at an end of the grid gets one more value there, once
    # Stage B: each arm's own parameters at its stage-A learning rate, the same number of trials for every arm
    tune_trials: int = ranged(10, Range(2))
    tune_seeds: list[int] = field(default_factory=lambda: [0])
    # Stage C: each arm's winner on fresh seeds (fresh warm-ups: the warm-up seed follows the run seed), test split
    test_seeds: list[int] = field(default_factory=lambda: list(range(100, 113)))
    # Pre-registered: the primary contrast is `primary` against the baseline chosen on validation in stage B (the
    # best of the other non-control arms); every other contrast is exploratory. Holm over the family.
    primary: str = "lpreg"
    alpha: float = ranged(0.05, Range(0, 1, lo_open=True, hi_open=True))


@dataclass
class SweepConfig:
    """An Optuna study run by ``hydra/sweeper=lpreg_optuna`` (see ``lpreg/sweeps/*.yaml``); with ``protocol`` set, the
    comparison protocol's studies instead."""

    name: str = MISSING  # study name; the sweep folder and default SQLite file are named after it
    n_trials: int = ranged(10, AT_LEAST_1)  # the study's total: the same command again finishes it, adds nothing
    batch_size: int = ranged(1, AT_LEAST_1)  # trials launched together (in parallel with hydra/launcher=joblib)
    seeds: list[int] = field(default_factory=lambda: [0])  # each trial's objective is the mean over these seeds
    # Optuna storage URL; unset: $LPREG_SWEEP_STORAGE (the way to give a URL with a password), else SQLite in the
    # sweep folder. Written masked wherever it is written (lpreg/redact.py).
    storage: str | None = None
    direction: str = choice("maximize", DIRECTIONS)
    sampler_seed: int = 0  # mixed with each study's name: every study has its own sampler seed
    sampler: str = choice("tpe", SAMPLERS)  # grid: every combination of the categorical params once
    startup_trials: int = ranged(3, NON_NEGATIVE)  # TPE's random start-up; must leave trials for TPE to model
    pruner: str = choice("none", PRUNERS)  # one seed per trial; any launcher: reports go through the storage
    pruner_startup: int = ranged(5, NON_NEGATIVE)  # completed trials before the median pruner prunes
    params: dict[str, Any] = field(default_factory=dict)  # key -> {type: float|int|categorical, low, high, log, choices}
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # points asked first, in order
    # Trials of a sweeper on another host that stopped: each running trial's heartbeat is recorded every
    # ``heartbeat_s``; one silent for ``grace_s`` is marked FAIL when a sweep starts and retried up to
    # ``max_retries`` times. 60/180 s: Optuna's documented example values. (A dead sweeper of this host is detected
    # at once from its pid: lpreg/harness/sweep.py.)
    heartbeat_s: int = ranged(60, AT_LEAST_1)
    grace_s: int = ranged(180, AT_LEAST_1)
    max_retries: int = ranged(0, NON_NEGATIVE)
    trial: int | None = None  # set by the sweeper on each job: the Optuna trial number it evaluates
    protocol: ProtocolConfig | None = None


@dataclass
class Config:
    seed: int = 0
    # The run's arm in summaries, tables and figures (default: the regularizer's name). Set by
    # lpreg/conf/arm/<name>.yaml, so that two arms of one regularizer (two entropy coefficients) stay apart.
    arm: str | None = None
    model: Any = MISSING
    task: Any = MISSING
    rollout: Any = MISSING
    regularizer: Any = MISSING
    backend: Any = MISSING  # backend=native | verl (lpreg/verl/config.py)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sweep: SweepConfig | None = None

    def __post_init__(self) -> None:
        # OmegaConf.to_object builds this object: every declared value and every rule across fields is checked here,
        # before any work
        check_fields(self)
        check_across(self)


def check_across(cfg: Config) -> None:
    """Rules that involve several fields; each message names the key to change."""
    if cfg.regularizer.name not in REGULARIZERS.names():
        raise ConfigValueError(f"regularizer.name={cfg.regularizer.name!r} is not a registered regularizer; valid "
                               f"choices: {', '.join(REGULARIZERS.names())}")
    t = cfg.trainer
    rows = t.prompts_per_step * cfg.rollout.group_size
    if rows % t.mini_batches:
        raise ConfigValueError(f"trainer.mini_batches={t.mini_batches} must divide trainer.prompts_per_step × "
                               f"rollout.group_size = {rows}")
    if 0 < t.max_tokens_per_micro_batch <= cfg.task.max_response_len:
        raise ConfigValueError(f"trainer.max_tokens_per_micro_batch={t.max_tokens_per_micro_batch} must be 0 (one "
                               "micro-batch per mini-batch) or hold a prompt plus task.max_response_len="
                               f"{cfg.task.max_response_len} tokens")


GROUPS: dict[str, list[type]] = {
    "model": [TinyModelConfig, HFModelConfig],
    "task": [ArithmeticTaskConfig, SparkTaskConfig, CountdownTaskConfig, MathTaskConfig],
    "rollout": [HFRolloutConfig, VLLMRolloutConfig],
    "backend": list(BACKENDS),  # native (one process) | verl (lpreg/verl/config.py)
}


def option_name(schema: type) -> str:
    """The user-facing option name of a group schema: its ``kind`` or ``name`` default."""
    fields = {f.name: f.default for f in dataclasses.fields(schema)}
    return fields.get("kind", fields.get("name"))


def register_configs() -> None:
    """Register the root schema, every group option and the ``sweep`` group (``lpreg/sweeps/*.yaml``) with Hydra."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in GROUPS.items():
        for schema in schemas:
            cs.store(group=group, name=option_name(schema), node=schema)
    for reg in REGULARIZERS.entries():
        cs.store(group="regularizer", name=reg.name, node=reg.config)
    for path in sorted(SWEEPS.glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose_config(overrides=()) -> Config:
    """The config object for command-line ``overrides``, composed and checked as ``lpreg.run`` does, outside a run
    (analysis of a run folder, rebuilding the shipped warm-ups)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


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
