"""``backend=``: the native trainer or verl, and verl's trainer config composed from ours.

``backend=native`` (the default) runs ``lpreg/native/trainer.py`` in one process. ``backend=verl`` composes verl's
trainer config (``verl/trainer/config/ppo_trainer.yaml`` of the installed verl) from the run's config, checks it
with verl's own validation and our memory estimate, and launches verl (``lpreg/verl/launch.py``). Every value comes
from one place: the model, task, trainer, rollout-sampling, metric and regularizer values from lpreg's config
(``lpreg/harness/config.py``, the experiment files), verl's engine values from :class:`VerlBackendConfig` below,
whose defaults are the reference recipes' (the Lp-Reg repository's ``recipe/lp_reg/*.sh`` with verl's defaults), each
with its source. Under ``backend=verl`` the native vLLM engine's own fields (``rollout.gpu_memory_utilization``,
``rollout.enforce_eager``, ``rollout.sleep``, ``rollout.max_model_len``) are not read: ``backend.*`` holds verl's.

How the verl run departs from the native one: verl's micro-batches (dynamic batch size, balanced by verl), verl's
log-prob pass and rollout (vLLM server), verl's dataloader order, and one evaluation protocol for every held-out
source (``backend.eval_protocol``): verl decodes all validation rows with the same sampling settings, where the
native trainer samples AIME avg@16 at T = 0.6 and decodes the others greedily.

Refused before launch, each with the key to change: a rollout that is not vLLM, no token budget, truncated
importance sampling (verl has its own rollout correction, not wired here), Lp-Reg's forward KL off-policy (the hook
carries one value per token, ``lpreg/verl/targets.py``), verl overrides that switch on what the extension does not
support (Ulysses sequence parallelism, static packing pads, the legacy trainer, LoRA, a KL loss or a reference
model), and a config whose memory estimate per GPU exceeds ``backend.gpu_memory_gib`` (:func:`check_fit`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpreg.checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, choice, ranged
from lpreg.native.device import DTYPES

EXTENSION = "lpreg.verl.extension"  # imported by verl in its workers (actor_rollout_ref.model.external_lib)
REWARD = "pkg://lpreg.verl.reward"  # verl's custom reward function module
# The prompt text is already the task's template (the R1-Zero template for math): sent to the model as is, with
# no chat formatting and no special tokens, as the native trainer sends it.
PASSTHROUGH_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
GIB = 2**30
STRATEGIES = ("fsdp", "fsdp2")  # backend.strategy
EVAL_PROTOCOLS = ("greedy", "sampled")  # backend.eval_protocol


@dataclass
class NativeBackendConfig:
    """The one-process trainer (``lpreg/native/trainer.py``): CPU or one GPU."""

    name: str = "native"


@dataclass
class VerlBackendConfig:
    """verl (Ray, FSDP, vLLM) for many GPUs and nodes: ``backend=verl`` (docs/verl.md). Defaults: the reference
    recipes (``recipe/lp_reg/*.sh`` of the Lp-Reg repository and the verl defaults it relies on)."""

    name: str = "verl"
    nnodes: int = ranged(8, AT_LEAST_1)  # recipe trainer.nnodes=8 (the paper ran Qwen3-14B on 32 H20, 32B on 64)
    gpus_per_node: int = ranged(8, AT_LEAST_1)  # recipe trainer.n_gpus_per_node=8
    # GPU memory the fit check compares its estimate with: 80 for A100/H100 80GB (the paper's H20 has 96)
    gpu_memory_gib: float = ranged(80.0, POSITIVE)
    strategy: str = choice("fsdp", STRATEGIES)  # actor.strategy (recipe: FSDP, no offload, fsdp_size -1)
    use_dynamic_bsz: bool = True  # recipe use_dynamic_bsz=True: micro-batches of at most the token budget
    use_remove_padding: bool = True  # recipe use_remove_padding=True (packed sequences, flash-attention varlen)
    # vLLM (verl's rollout server), colocated with the actor and put to sleep during the update
    tensor_parallel_size: int = ranged(1, AT_LEAST_1)  # recipe rollout.tensor_model_parallel_size=1
    gpu_memory_utilization: float = ranged(0.85, Range(0, 1, lo_open=True))  # recipe 0.85
    max_num_batched_tokens: int = ranged(30720, AT_LEAST_1)  # recipe max_num_batched_tokens=max_token=30720
    enforce_eager: bool = True  # recipe: verl's default enforce_eager=True (no CUDA graphs)
    enable_chunked_prefill: bool = True  # recipe enable_chunked_prefill=True
    dtype: str = choice("bfloat16", DTYPES)  # rollout dtype (recipe: verl's default bf16)
    # Held-out evaluation: verl decodes every validation row alike. greedy: one greedy sample (the paper's
    # protocol for MATH-500, Minerva, OlympiadBench); sampled: task.sampled_k samples at task.sampled_temperature
    # (the paper's avg@16 at T = 0.6 for AIME) for every source.
    eval_protocol: str = choice("greedy", EVAL_PROTOCOLS)
    reward_workers_per_manager: int = ranged(1, NON_NEGATIVE)  # grading processes in each of verl's reward workers
    ray_address: str | None = None  # an existing Ray cluster (multi-node: `ray start` on every node first); null = local
    wandb: bool = False  # also let verl log to W&B under its own names (lpreg's tracker mirrors ours anyway)
    # Extra verl overrides (key=value, verl's keys), applied last and checked like the rest.
    overrides: list[str] = field(default_factory=list)


BACKENDS = (NativeBackendConfig, VerlBackendConfig)


class VerlConfigError(ValueError):
    """A config the verl backend refuses before launch; the message names the key and the valid choices."""


# ---- the run's verl values ---------------------------------------------------------------------------------------


def mini_batch_prompts(cfg) -> int:
    t = cfg.trainer
    if t.prompts_per_step % t.mini_batches:
        raise VerlConfigError(f"trainer.mini_batches={t.mini_batches} must divide trainer.prompts_per_step="
                              f"{t.prompts_per_step} (verl's ppo_mini_batch_size counts prompts)")
    return t.prompts_per_step // t.mini_batches


def plan_dict(cfg) -> dict:
    """What lpreg's actor extension needs (``ActorPlan``), as a plain dict inside verl's config."""
    return {"regularizer": dataclasses.asdict(cfg.regularizer), "tail_kappa": cfg.metrics.tail_kappa,
            "lowprob_threshold": cfg.metrics.lowprob_threshold, "token_chunk": cfg.trainer.token_chunk}


def task_dict(cfg) -> dict:
    return dataclasses.asdict(cfg.task)


def values(cfg, job_dir: Path) -> dict[str, Any]:
    """verl's config values for this run: ``{dotted verl key: value}`` (the module docstring says where each comes
    from; ``lpreg/verl/losses.py`` translates the arm)."""
    from lpreg.verl.losses import actor_fields

    b, t, task = cfg.backend, cfg.trainer, cfg.task
    run = Path(job_dir) / "verl"
    budget = t.max_tokens_per_micro_batch
    sampled = b.eval_protocol == "sampled"
    out: dict[str, Any] = {
        "data.train_files": [str(run / "data" / "train.parquet")],
        "data.val_files": [str(run / "data" / "val.parquet")],
        "data.prompt_key": "prompt",
        "data.max_prompt_length": task.max_prompt_len,
        "data.max_response_length": task.max_response_len,
        "data.train_batch_size": t.prompts_per_step,
        "data.truncation": "left",  # recipe data.truncation=left
        "data.filter_overlong_prompts": False,  # recipe
        "data.seed": cfg.seed,
        "actor_rollout_ref.model.path": cfg.model.path,
        "actor_rollout_ref.model.trust_remote_code": cfg.model.trust_remote_code,
        "actor_rollout_ref.model.enable_gradient_checkpointing": cfg.model.gradient_checkpointing,
        "actor_rollout_ref.model.use_remove_padding": b.use_remove_padding,
        "actor_rollout_ref.model.external_lib": EXTENSION,
        "actor_rollout_ref.model.custom_chat_template": PASSTHROUGH_TEMPLATE,
        "actor_rollout_ref.actor.strategy": b.strategy,
        "actor_rollout_ref.actor.ppo_mini_batch_size": mini_batch_prompts(cfg),
        "actor_rollout_ref.actor.ppo_epochs": 1,  # recipe (verl default)
        "actor_rollout_ref.actor.shuffle": False,  # recipe (verl default): contiguous mini-batches
        "actor_rollout_ref.actor.use_dynamic_bsz": b.use_dynamic_bsz,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": budget,
        "actor_rollout_ref.actor.use_kl_loss": False,  # recipe
        "actor_rollout_ref.actor.kl_loss_coef": 0.0,
        "actor_rollout_ref.actor.entropy_coeff": 0.0,  # an entropy bonus is lpreg's `entropy` arm, in its loss
        "actor_rollout_ref.actor.entropy_from_logits_with_chunking": True,  # same values, less memory
        "actor_rollout_ref.actor.optim.lr": t.lr,
        "actor_rollout_ref.actor.optim.weight_decay": t.weight_decay,
        "actor_rollout_ref.actor.optim.betas": list(t.betas),
        "actor_rollout_ref.actor.optim.clip_grad": t.grad_clip,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": t.lr_warmup_steps,  # one scheduler step per rollout
        "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
        "actor_rollout_ref.actor.fsdp_config.param_offload": False,  # recipe
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,  # recipe
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": cfg.rollout.group_size,
        "actor_rollout_ref.rollout.temperature": cfg.rollout.temperature,
        "actor_rollout_ref.rollout.top_p": 1.0,  # recipe
        "actor_rollout_ref.rollout.top_k": -1,  # recipe
        "actor_rollout_ref.rollout.seed": cfg.seed,
        "actor_rollout_ref.rollout.dtype": b.dtype,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": b.tensor_parallel_size,
        "actor_rollout_ref.rollout.gpu_memory_utilization": b.gpu_memory_utilization,
        "actor_rollout_ref.rollout.max_num_batched_tokens": b.max_num_batched_tokens,
        "actor_rollout_ref.rollout.enforce_eager": b.enforce_eager,
        "actor_rollout_ref.rollout.enable_chunked_prefill": b.enable_chunked_prefill,
        "actor_rollout_ref.rollout.free_cache_engine": True,  # sleep during the update (recipe)
        "actor_rollout_ref.rollout.max_model_len": task.max_prompt_len + task.max_response_len,
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": b.use_dynamic_bsz,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": budget,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": sampled,
        "actor_rollout_ref.rollout.val_kwargs.temperature": task.sampled_temperature if sampled else 0.0,
        "actor_rollout_ref.rollout.val_kwargs.n": task.sampled_k if sampled else 1,
        "actor_rollout_ref.rollout.val_kwargs.top_p": 1.0,
        "actor_rollout_ref.rollout.val_kwargs.top_k": -1,
        "algorithm.adv_estimator": "grpo",  # recipe (norm_adv_by_std_in_grpo=True, gamma = lam = 1: defaults)
        "algorithm.norm_adv_by_std_in_grpo": True,
        "algorithm.use_kl_in_reward": False,  # recipe
        "algorithm.kl_ctrl.kl_coef": 0.0,  # recipe
        "reward.custom_reward_function.path": REWARD,
        "reward.custom_reward_function.name": "compute_score",
        "trainer.nnodes": b.nnodes,
        "trainer.n_gpus_per_node": b.gpus_per_node,
        "trainer.device": "cuda",
        "trainer.total_training_steps": t.steps,
        "trainer.total_epochs": 1_000_000,  # steps bind, not epochs (recipe total_epochs=15 did not bind either)
        "trainer.test_freq": cfg.eval.every,
        "trainer.val_before_train": cfg.eval.at_start,
        "trainer.save_freq": t.checkpoint_every,
        "trainer.max_actor_ckpt_to_keep": t.keep_checkpoints,
        "trainer.default_local_dir": str(run / "checkpoints"),
        "trainer.resume_mode": "auto" if t.resume else "disable",
        "trainer.logger": ["console", "file", *(["wandb"] if b.wandb else [])],
        "trainer.project_name": cfg.wandb.project,
        "trainer.experiment_name": f"{cfg.arm or cfg.regularizer.name}-s{cfg.seed}",
        "trainer.use_v1": True,  # the trainer whose TransferQueue carries the extension's per-token targets
        "trainer.v1.trainer_mode": "sync",
    }
    if b.ray_address:
        out["ray_kwargs.ray_init.address"] = b.ray_address
    out |= {f"actor_rollout_ref.actor.{k}": v for k, v in actor_fields(cfg.regularizer).items()}
    return out


# ---- checks --------------------------------------------------------------------------------------------------


def check_lpreg(cfg) -> None:
    """Refusals that need only lpreg's config (module docstring)."""
    from lpreg.core.losses import REGULARIZERS

    if REGULARIZERS.get(cfg.regularizer.name).control:
        raise VerlConfigError(f"regularizer={cfg.regularizer.name} is a positive control of an embedded testbed (it "
                              "needs the task's decision point): run it with backend=native")
    b = cfg.backend
    if b.eval_protocol == "sampled" and not hasattr(cfg.task, "sampled_temperature"):
        raise VerlConfigError(f"backend.eval_protocol=sampled needs task.sampled_k and task.sampled_temperature, "
                              f"which task={cfg.task.name} has not: use backend.eval_protocol=greedy")
    if cfg.model.kind != "hf":
        raise VerlConfigError(f"backend=verl loads a Hugging Face model: set model=hf model.path=... (model="
                              f"{cfg.model.kind} is the embedded testbed of the native trainer)")
    if cfg.rollout.name != "vllm":
        raise VerlConfigError(f"backend=verl generates with vLLM: set rollout=vllm (rollout={cfg.rollout.name})")
    if cfg.rollout.tis_cap is not None:
        raise VerlConfigError("rollout.tis_cap (truncated importance sampling) is not wired to verl's rollout "
                              "correction: set rollout.tis_cap=null with backend=verl")
    if cfg.trainer.max_tokens_per_micro_batch <= 0:
        raise VerlConfigError("backend=verl needs a token budget per micro-batch: set trainer.max_tokens_per_micro_"
                              "batch (the recipe: 30720; verl's ppo_max_token_len_per_gpu)")
    if cfg.trainer.max_tokens_per_micro_batch < cfg.task.max_prompt_len + cfg.task.max_response_len:
        raise VerlConfigError(f"trainer.max_tokens_per_micro_batch={cfg.trainer.max_tokens_per_micro_batch} must hold "
                              f"one sequence: task.max_prompt_len + task.max_response_len = "
                              f"{cfg.task.max_prompt_len + cfg.task.max_response_len}")
    mini_batch_prompts(cfg)
    reg = cfg.regularizer
    if reg.name == "lpreg" and reg.divergence == "forward_kl" and cfg.trainer.mini_batches != 1:
        raise VerlConfigError("regularizer.divergence=forward_kl runs on verl only on-policy (trainer.mini_batches=1): "
                              "verl's hook carries one value per token, so the proxy is built from the current "
                              "logits, which equal π_old's only in the first update of a rollout")


# (key, refused values or a predicate, why): verl settings the extension does not support
UNSUPPORTED = (
    ("actor_rollout_ref.actor.ulysses_sequence_parallel_size", lambda v: v not in (None, 1),
     "Ulysses sequence parallelism: the logits hook would see a slice of each packed sequence"),
    ("actor_rollout_ref.actor.fsdp_config.pad_to_length", lambda v: bool(v), "static packing pads"),
    ("trainer.use_v1", lambda v: not v, "the legacy trainer drops the log-prob pass outputs the update needs"),
    ("actor_rollout_ref.actor.use_kl_loss", lambda v: bool(v), "a KL loss (lpreg's actor loss has none)"),
    ("algorithm.use_kl_in_reward", lambda v: bool(v), "a KL penalty in the reward"),
    ("actor_rollout_ref.model.lora_rank", lambda v: bool(v), "LoRA"),
    ("actor_rollout_ref.actor.ppo_epochs", lambda v: v != 1, "several epochs (lpreg's per-rollout statistics are "
     "accumulated over one pass of the update)"),
    ("actor_rollout_ref.model.use_fused_kernels", lambda v: bool(v), "fused kernels (they never materialize the "
     "logits the hook reads)"),
)


def check_verl(vc) -> None:
    """Refuse verl settings outside what lpreg's extension supports (``UNSUPPORTED``)."""
    from omegaconf import OmegaConf

    for key, bad, why in UNSUPPORTED:
        value = OmegaConf.select(vc, key, default=None)
        if bad(value):
            raise VerlConfigError(f"verl's {key}={value} is not supported by lpreg's extension: {why}")


def validate(vc) -> None:
    """verl's own checks: ``validate_config`` (as ``verl.trainer.main_ppo`` runs it) and the typed actor and
    rollout configs."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    if need_critic(vc) or need_reference_policy(vc):
        raise VerlConfigError("lpreg's verl runs have no critic and no reference model (GRPO, no KL)")
    validate_config(config=vc, use_reference_policy=False, use_critic=False)
    omega_conf_to_dataclass(vc.actor_rollout_ref.rollout)
    check_verl(vc)


# ---- memory --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the memory estimate needs of a decoder-only model."""

    params: float
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int


def shape_of(hf_config) -> Shape:
    """A transformers config's shape; the parameter count from its matrices (attention, gated MLP, embeddings)."""
    c = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    h, ff, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2  # q, o and k, v projections
    params = L * (attn + 3 * h * ff) + V * h * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    return Shape(float(params), L, h, ff, V, kv, hd)


def load_shape(path: str, trust_remote_code: bool = False) -> Shape:
    """The model's shape from its ``config.json`` (a local folder or the Hugging Face cache / Hub)."""
    from transformers import AutoConfig

    try:
        return shape_of(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
    except (OSError, ValueError) as err:
        raise VerlConfigError(f"model.path={path!r}: cannot read its config.json to check that the run fits "
                              f"({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class Estimate:
    """Memory per GPU of one verl run, in bytes, by part; ``train`` and ``rollout`` are the two peaks."""

    states: float  # fp32 weights, gradients and AdamW moments, sharded by FSDP over every GPU (16 B/parameter)
    activations: float  # checkpointed layer inputs of one micro-batch, plus one layer's working set
    logits: float  # the micro-batch's logits (bf16) and their gradient, plus lpreg's chunk temporaries
    vllm: float  # vLLM's share while it generates (gpu_memory_utilization of the GPU)
    vllm_weights: float  # bf16 weights per tensor-parallel shard inside vLLM's share
    kv_one_sequence: float  # KV cache of one sequence of max_model_len tokens (vLLM must hold at least that)

    @property
    def train(self) -> float:
        return self.states + self.activations + self.logits

    @property
    def rollout(self) -> float:
        return self.states + self.vllm


def estimate(shape: Shape, cfg) -> Estimate:
    """Per-GPU memory of the run (arithmetic, not measured; each term's formula in :class:`Estimate`).

    The update's micro-batch holds at most ``T = trainer.max_tokens_per_micro_batch`` tokens. With gradient
    checkpointing each layer keeps its input (T·h bf16) and one layer at a time its working set (about T·(20h + 4ff)
    bf16: attention projections, the gated MLP); without it every layer keeps its working set. The logits are T·V bf16
    and their gradient as much (verl's log-prob kernel works in place), and lpreg's hook adds four fp32 chunks of
    ``trainer.token_chunk`` × V. While vLLM generates, the actor's sharded states stay on the GPU beside vLLM's share.
    """
    b, T = cfg.backend, cfg.trainer.max_tokens_per_micro_batch
    n_gpus = b.nnodes * b.gpus_per_node
    layer = T * (20 * shape.hidden + 4 * shape.intermediate) * 2
    kept = T * shape.hidden * 2 * shape.layers if cfg.model.gradient_checkpointing else layer * shape.layers
    chunk = (cfg.trainer.token_chunk or T) * shape.vocab * 4 * 4
    max_len = cfg.task.max_prompt_len + cfg.task.max_response_len
    return Estimate(states=16 * shape.params / n_gpus, activations=kept + layer,
                    logits=2 * T * shape.vocab * 2 + chunk, vllm=b.gpu_memory_utilization * b.gpu_memory_gib * GIB,
                    vllm_weights=2 * shape.params / b.tensor_parallel_size,
                    kv_one_sequence=2 * shape.layers * shape.kv_heads * shape.head_dim * 2 * max_len
                    / b.tensor_parallel_size)


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def check_fit(est: Estimate, cfg) -> None:
    """Refuse a run whose estimate exceeds the GPU (``backend.gpu_memory_gib``), with the numbers."""
    b = cfg.backend
    gpu = b.gpu_memory_gib * GIB
    n_gpus = b.nnodes * b.gpus_per_node
    where = (f"(backend.nnodes={b.nnodes} x backend.gpus_per_node={b.gpus_per_node} = {n_gpus} GPUs of "
             f"backend.gpu_memory_gib={b.gpu_memory_gib:g})")
    if est.train > gpu:
        raise VerlConfigError(
            f"the update does not fit: per GPU {_gib(est.train)} = FSDP states {_gib(est.states)} + activations "
            f"{_gib(est.activations)} + logits {_gib(est.logits)} > {_gib(gpu)} {where}; use more GPUs or a smaller "
            f"trainer.max_tokens_per_micro_batch={cfg.trainer.max_tokens_per_micro_batch}")
    if est.rollout > gpu:
        raise VerlConfigError(
            f"generation does not fit: per GPU FSDP states {_gib(est.states)} stay beside vLLM's "
            f"{b.gpu_memory_utilization:g} x {_gib(gpu)} = {_gib(est.vllm)}, total {_gib(est.rollout)} > {_gib(gpu)} "
            f"{where}; lower backend.gpu_memory_utilization or use more GPUs")
    need = est.vllm_weights + est.kv_one_sequence
    if need > est.vllm:
        raise VerlConfigError(
            f"vLLM's share does not hold the model: bf16 weights {_gib(est.vllm_weights)} + the KV cache of one "
            f"{cfg.task.max_prompt_len + cfg.task.max_response_len}-token sequence {_gib(est.kv_one_sequence)} "
            f"= {_gib(need)} > backend.gpu_memory_utilization={b.gpu_memory_utilization:g} x {_gib(gpu)} = "
            f"{_gib(est.vllm)}; raise backend.tensor_parallel_size={b.tensor_parallel_size} or the utilization")


# ---- composition ---------------------------------------------------------------------------------------------

NEW_KEYS = {"ray_kwargs.ray_init.address"}  # keys lpreg may add: verl's config leaves them out by default


def compose_verl(vals: dict[str, Any], overrides: list[str] = ()):
    """verl's trainer config (its ``ppo_trainer.yaml`` composed by Hydra) with ``vals`` set and ``overrides``
    (``key=value``, verl's keys) applied last. A key verl does not have is an error naming it."""
    import os

    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    conf_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    outer = GlobalHydra.instance().is_initialized()  # inside lpreg.run: keep lpreg's Hydra as it is
    saved = GlobalHydra.instance().hydra if outer else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            vc = compose(config_name="ppo_trainer", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    for key, value in vals.items():
        if key not in NEW_KEYS and not _has(vc, key):
            raise VerlConfigError(f"verl {verl.__version__} has no config key {key!r} (lpreg/verl/config.py)")
        with open_dict(vc):
            OmegaConf.update(vc, key, value, merge=False, force_add=True)
    for item in overrides:  # again, so that an override wins over lpreg's value
        key, _, value = item.partition("=")
        with open_dict(vc):
            OmegaConf.update(vc, key.lstrip("+"), _parse(value), merge=False, force_add=True)
    return vc


def _has(vc, key: str) -> bool:
    """Whether verl's config has ``key`` (a missing value, ``???``, counts as present)."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(vc, parent, default=None) if parent else vc
    return isinstance(node, DictConfig) and last in node.keys()


def _parse(text: str) -> Any:
    """A Hydra-style override value: YAML scalars and lists (``true``, ``3``, ``[a, b]``, ``null``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build(cfg, job_dir: Path, shape: Shape | None = None):
    """The run's verl config, checked (module docstring): ``(verl DictConfig, memory estimate)``."""
    from omegaconf import open_dict

    check_lpreg(cfg)
    vc = compose_verl(values(cfg, job_dir), list(cfg.backend.overrides))
    with open_dict(vc):
        vc.actor_rollout_ref["lpreg"] = plan_dict(cfg)
        vc.reward.custom_reward_function["reward_kwargs"] = {
            "task": task_dict(cfg), "workers": cfg.backend.reward_workers_per_manager}
    validate(vc)
    est = estimate(shape or load_shape(cfg.model.path, cfg.model.trust_remote_code), cfg)
    check_fit(est, cfg)
    return vc, est
