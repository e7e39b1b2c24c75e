"""One training run over several processes (``torchrun --nproc_per_node=N -m lpreg.run ...``): FSDP2 + gloo/NCCL.

A run is distributed when it was launched by torchrun (``RANK``/``WORLD_SIZE`` in the environment, also with one
process) or as a SLURM task array (submitit ``tasks_per_node``: :func:`launch` exports torchrun's variables from
SLURM's). ``python -m lpreg.run`` without a launcher takes none of these paths: every helper here is the identity
when the process group is not initialized, so single-process runs are unchanged (same ``metrics.jsonl`` bytes).

What is distributed and how (all of it makes the logged metrics independent of the number of ranks W):

- Layout: the step's P prompts are cut into ``trainer.mini_batches`` M global mini-batches; rank r holds the r-th
  contiguous 1/W of each (:func:`shard_prompts`), so global mini-batch j is the union of the ranks' local mini-batch
  j, and a prompt's G responses never leave their rank (group advantages are local and exact). Needs P % (M·W) == 0.
- Rollouts (:class:`GroupRollout`): each rank generates its prompts one group at a time, the group's sampling seeded
  from (run seed, step, the prompt's position in the step), so the rollout does not depend on W. Generation runs on a
  full-parameter copy of the policy (HF ``generate`` on FSDP2-sharded weights would all-gather every layer at every
  token, with a different token count per rank: a deadlock); the copy is refreshed after each update by gathering
  the shards one tensor at a time (``sync_weights``). Cost: one unsharded copy of the weights per rank (in the
  compute dtype on CUDA).
- Token pass: the policy is sharded with ``fully_shard`` per decoder layer and then at a root :class:`TokenPass`
  module whose forward *is* ``lpreg.tokens.per_token``; the root owns the (tied) embedding, the final norm and the
  head, so its pre-forward unshards them before ``get_decoder()`` / ``get_output_embeddings()`` are called, and its
  backward hooks reduce their gradients. The embedding is never sharded alone (tied weights). On CUDA with
  ``model.dtype`` bf16 the policy is ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``; parameters and
  AdamW state stay fp32 (master weights).
- Loss: the mini-batch counts ``Norm`` are summed over ranks (:func:`global_norm`), so each rank's loss is its share
  of the global token-mean; FSDP sums (not averages) gradients over ranks (divide factor 1), so the gradient is the
  single-process one. Every rank runs the same number of micro-batches per mini-batch (:func:`equal_counts` splits
  micro-batches of ranks with fewer), because each forward and backward is a collective.
- Regularizers: Lp-Reg ``scope: micro_batch``, KL-Cov, Clip-Cov and 80/20 select per micro-batch on each rank, as the
  reference does per GPU micro-batch (so they depend on W and the micro-batch budget, as in the reference).
  ``scope: batch`` gets the rollout targets from the whole rollout's tokens gathered over ranks
  (:func:`gather_tokens`; rollout targets must not depend on token order: δ is an order statistic).
- Metrics: reduced before logging (:func:`reduce_metrics`): token- or row-weighted means, summed counts, global max;
  rank 0 alone writes the local store, ``summary.json``, W&B and the progress bar (``lpreg/run.py``).
- Evaluation runs on rank 0 (on the full copy) and its result is broadcast (:func:`rank0_call`), as is the sweep
  pruner's decision, so a pruned trial stops every rank.
- Checkpoints (:func:`save_checkpoint`): ``torch.distributed.checkpoint`` shards of model and optimizer in ``dcp/``
  (resumable on any number of ranks), the Hugging Face export and ``trainer_state.pt`` written by rank 0, in a
  temporary folder renamed by rank 0 after every rank finished (atomic at the folder level).
- Failures: :func:`launch` wraps the entry point in torch.distributed.elastic's ``@record`` and ``lpreg/run.py``
  records a job's exception in the rank's error file, so torchrun ends the whole job (SIGTERM to the other ranks)
  and prints the failed rank with its error; SIGTERM is turned into ``SystemExit`` (``lpreg.run.stop_on_sigterm``,
  on every rank) so rank 0 still writes ``summary.json`` with status failed.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lpreg.tokens import per_token, plan

SUMMED = frozenset({"lpreg/candidates", "lpreg/regularized", "kl_cov/selected", "highent/kept",
                    "train/reward_timeouts", "train/reward_worker_restarts", "policy/lowprob_count"})
MAXED = frozenset({"lpreg/delta", "rollout/logprob_diff_max"})
WEIGHT_OF = {  # metric -> the local count its rank value is a mean over (default: response tokens)
    "lpreg/reg_ratio": "lpreg/candidates", "lpreg/noise_frac": "lpreg/candidates",
    "lpreg/div_mean": "lpreg/regularized", "lpreg/proxy_ratio_mean": "lpreg/regularized",
}


def launched() -> bool:
    """Whether a launcher (torchrun, or SLURM tasks exported by :func:`launch`) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_world() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def _slurm_env() -> None:
    """Export torchrun's variables from a SLURM task (submitit ``tasks_per_node``), if not launched by torchrun."""
    if launched() or "SLURM_NTASKS" not in os.environ or int(os.environ["SLURM_NTASKS"]) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# Bound on every collective, including the other ranks' wait while rank 0 evaluates (torch's defaults, 30 min for
# gloo and 10 for NCCL, are shorter than a real-scale evaluation of MATH-500 plus AIME avg@k). Set before Hydra
# composes the config, so it is a constant, not a config value.
PG_TIMEOUT_MIN = 60


def init() -> None:
    """Join the process group from the launcher's environment (``env://``): gloo for CPU tensors, NCCL for CUDA."""
    if active():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=_dt.timedelta(minutes=PG_TIMEOUT_MIN))


def join() -> None:
    """Called first in the Hydra task function: join the group when a launcher started several tasks that did not
    come through :func:`launch` (Hydra's submitit launcher with ``tasks_per_node`` calls the task function in each
    SLURM task). A no-op for torchrun (already joined) and for single-process runs."""
    _slurm_env()
    if launched():
        init()


def _agree_clock() -> None:
    """Make Hydra's ``${now:...}`` resolve to rank 0's start time on every rank, so all ranks share one job folder.

    Hydra re-registers its ``now`` resolver (``hydra.core.utils.setup_globals``) as ``datetime.now()`` of that module;
    this replaces the module's ``datetime`` by one whose ``now()`` is rank 0's."""
    import hydra.core.utils as hydra_utils

    stamp = [_dt.datetime.now().isoformat()]
    dist.broadcast_object_list(stamp, src=0)
    fixed = _dt.datetime.fromisoformat(stamp[0])

    class _Clock(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return fixed

    hydra_utils.datetime = _Clock


def launch(main: Callable[[], Any]) -> Any:
    """Run the Hydra entry point ``main``; under a launcher: join the group, share the job folder, silence Hydra's
    files on ranks > 0 (they log to stdout), and record a failure for torchrun (``@record``)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    _slurm_env()
    if not launched():
        return main()
    if "-m" in sys.argv or "--multirun" in sys.argv:
        raise SystemExit("lpreg.run -m under torchrun would run the whole sweep on every rank (an Optuna sweep would "
                         "draw different trials per rank): run one torchrun per job, or a multirun with "
                         "hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=N (README, 'One run on several "
                         "GPUs')")
    init()
    _agree_clock()
    if rank() > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    try:
        return record(main)()
    finally:
        if active():
            dist.destroy_process_group()


def record_error(err: BaseException) -> None:
    """Write ``err`` to this rank's torchelastic error file (torchrun prints it as the failed rank's root cause)."""
    if launched() and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(err)


# ---- layout ------------------------------------------------------------------------------------------------


def shard_prompts(n_prompts: int, mini_batches: int, n_ranks: int, r: int) -> list[int]:
    """Positions (in the step's prompt list) of rank ``r``'s prompts: the r-th contiguous 1/W of each mini-batch."""
    if n_prompts % (mini_batches * n_ranks):
        raise ValueError(f"trainer.prompts_per_step={n_prompts} must be divisible by trainer.mini_batches="
                         f"{mini_batches} × the number of ranks ({n_ranks}): each rank holds whole prompt groups "
                         "of every mini-batch")
    per_mini, q = n_prompts // mini_batches, n_prompts // (mini_batches * n_ranks)
    return [j * per_mini + r * q + i for j in range(mini_batches) for i in range(q)]


def equal_counts(minis: list[list], gen) -> list[list]:
    """Split micro-batches so that every rank has as many per mini-batch as the rank with most (halving the one
    with most rows; contiguous, so each piece stays within the token budget). Identity on one process."""
    if not active():
        return minis
    counts = torch.tensor([len(m) for m in minis], dtype=torch.long)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    out = []
    for mini, n in zip(minis, counts.tolist()):
        mini = list(mini)
        while len(mini) < n:
            i = max(range(len(mini)), key=lambda k: mini[k].rows.stop - mini[k].rows.start)
            rows = mini[i].rows
            if rows.stop - rows.start < 2:
                raise ValueError("a rank has fewer rows than another rank has micro-batches: raise "
                                 "trainer.max_tokens_per_micro_batch or use fewer ranks")
            mid = (rows.start + rows.stop) // 2
            mini[i:i + 1] = [plan(gen, slice(rows.start, mid), 0)[0], plan(gen, slice(mid, rows.stop), 0)[0]]
        out.append(mini)
    return out


# ---- reductions --------------------------------------------------------------------------------------------


def all_sum(values: list, dtype: torch.dtype = torch.float64) -> list:
    """``values`` summed elementwise over ranks (as ``dtype``: float64, or torch.long for counts). Identity on one
    process."""
    if not active():
        return values
    t = torch.tensor(values, dtype=dtype)
    dist.all_reduce(t)
    return t.tolist()


def global_norm(norm):
    """The mini-batch counts summed over ranks (``lpreg.losses.Norm``). Identity on one process."""
    return type(norm)(*all_sum([norm.tokens, norm.seqs, norm.rows])) if active() else norm


def gather_tokens(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each ``[N_r]`` tensor concatenated over ranks in rank order (``[ΣN_r]``). Identity on one process."""
    if not active():
        return flat
    n = torch.tensor([flat[0].numel()], dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    out = []
    for t in flat:
        buf = t.new_zeros(max(sizes))
        buf[:t.numel()] = t
        parts = [torch.zeros_like(buf) for _ in sizes]
        dist.all_gather(parts, buf)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return tuple(out)


def reduce_metrics(metrics: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Per-rank metric values -> the values over all ranks' data (identity on one process).

    ``loss/*`` and the counts in ``SUMMED`` are summed; ``MAXED`` take the global max (NaN ignored); every other
    value is a mean weighted by the local count it averages: ``WEIGHT_OF[key]`` (a count in ``metrics``), else
    ``weights[key]``, else ``weights["rows"]`` for ``train/*``, else ``weights["tokens"]`` (response tokens).
    A NaN value (nothing to average on that rank) has weight 0; NaN if no rank has any."""
    if not active():
        return metrics
    keys = sorted(metrics)
    local = {**weights, **metrics}

    def weight(k):
        if k in WEIGHT_OF:
            return local[WEIGHT_OF[k]]
        if k in weights:
            return weights[k]
        return weights["rows"] if k.startswith("train/") else weights["tokens"]

    sums, maxes = [], []
    for k in keys:
        v = metrics[k]
        if k in MAXED:
            maxes.append(-math.inf if math.isnan(v) else v)
        elif k in SUMMED or k.startswith("loss/"):
            sums += [v, 1.0]
        else:
            w = 0.0 if math.isnan(v) else float(weight(k))
            sums += [v * w if w else 0.0, w]
    s = torch.tensor(sums, dtype=torch.float64)
    m = torch.tensor(maxes or [0.0], dtype=torch.float64)
    dist.all_reduce(s)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    out, i, j = {}, 0, 0
    for k in keys:
        if k in MAXED:
            out[k] = m[j].item() if m[j].item() > -math.inf else math.nan
            j += 1
        elif k in SUMMED or k.startswith("loss/"):
            out[k] = s[i].item()
            i += 2
        else:
            out[k] = s[i].item() / s[i + 1].item() if s[i + 1].item() > 0 else math.nan
            i += 2
    return out


def rank0_call(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result (or its exception, re-raised) on every rank. Plain call on one process."""
    if not active():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - sent to every rank and re-raised there
            box[0] = ("err", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def to_float(t) -> float:
    """A 0-d tensor or DTensor (e.g. ``clip_grad_norm_``'s total norm under FSDP) as a float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


# ---- model -------------------------------------------------------------------------------------------------


class TokenPass(nn.Module):
    """The FSDP root: ``forward(mb, ...)`` is ``lpreg.tokens.per_token(policy, mb, ...)`` so the root's hooks run
    around the token pass (it calls the decoder and the head directly, not ``policy.forward``)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, mb, temperature: float, chunk: int, fns: dict, old=None, grad: bool = False,
                autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return per_token(self.policy, mb, temperature, chunk, fns, old=old, grad=grad, autocast=autocast)


def fsdp_modules(root: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


def shard(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> TokenPass:
    """``fully_shard`` each decoder layer (``model._no_split_modules``), then the :class:`TokenPass` root holding
    the embedding, final norm and head; gradients summed over ranks (module docstring)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules): lpreg cannot "
                         "shard it per layer")
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if (
        device.type == "cuda" and dtype is not None) else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    root = fully_shard(TokenPass(model), mp_policy=mp)
    for m in fsdp_modules(root):
        m.set_gradient_divide_factor(1.0)  # sum over ranks: each rank's loss is already its share of the mean
        m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return root


def reshard(root: nn.Module) -> None:
    for m in fsdp_modules(root):
        m.reshard()


def sync_grads(root: nn.Module, last: bool) -> None:
    """Reduce gradients only at the last micro-batch of a mini-batch (FSDP2's ``no_sync``)."""
    if active():
        for m in fsdp_modules(root):
            m.set_requires_gradient_sync(last, recurse=False)


class GroupRollout:
    """Rollouts for a distributed run: ``engine`` (an ``lpreg.rollout`` engine built on a full-parameter copy of the
    policy) generates one prompt group at a time with a per-group seed; ``sync_weights`` gathers the sharded policy
    into the copy (collective: every rank calls it)."""

    def __init__(self, engine, copy_model: nn.Module, sharded: nn.Module):
        self.engine, self.copy, self.sharded = engine, copy_model, sharded

    def sync_weights(self) -> None:
        reshard(self.sharded)
        target = self.copy.state_dict()
        with torch.no_grad():
            for name, t in self.sharded.policy.state_dict().items():  # the same order on every rank
                target[name].copy_(t.full_tensor() if hasattr(t, "full_tensor") else t)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seeds: list[int]):
        return self.engine.generate(prompts, max_new_tokens, temperature, seeds)

    def generate_groups(self, prompts: list[list[int]], group_size: int, max_new_tokens: int, temperature: float,
                        seeds: list[int]):
        """One ``generate`` per group of ``group_size`` token-id prompts, sampled from ``seeds[g]`` (the engine
        samples from its own generator); the groups' outputs padded into one ``Generation``."""
        gens = [self.engine.generate(prompts[g * group_size:(g + 1) * group_size], max_new_tokens, temperature,
                                     [seed] * group_size) for g, seed in enumerate(seeds)]
        return concat_generations(gens, self.engine.tokenizer.pad_token_id)


def concat_generations(gens: list, pad_id: int):
    """Generations stacked row-wise: prompts left-padded, responses right-padded to the widest."""
    from lpreg.rollout import Generation

    P = max(g.prompt_ids.shape[1] for g in gens)
    R = max(g.response_ids.shape[1] for g in gens)
    left = lambda t, v: torch.nn.functional.pad(t, (P - t.shape[1], 0), value=v)  # noqa: E731
    right = lambda t, v: torch.nn.functional.pad(t, (0, R - t.shape[1]), value=v)  # noqa: E731
    logp = [g.rollout_log_prob for g in gens]
    return Generation(torch.cat([left(g.prompt_ids, pad_id) for g in gens]),
                      torch.cat([left(g.prompt_mask, 0) for g in gens]),
                      torch.cat([right(g.response_ids, pad_id) for g in gens]),
                      torch.cat([right(g.response_mask, 0) for g in gens]),
                      torch.cat([g.finished for g in gens]), [t for g in gens for t in g.texts],
                      torch.cat([right(x, 0.0) for x in logp]) if all(x is not None for x in logp) else None)


def group_seed(run_seed: int, step: int, position: int) -> int:
    """Sampling seed of the prompt group at ``position`` of step ``step`` (independent of the number of ranks)."""
    return (run_seed * 1_000_003 + step) * 100_003 + position


def generation_copy(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """The unsharded copy rollouts and evaluation generate with (compute dtype on CUDA, fp32 on CPU)."""
    out = copy.deepcopy(model)
    if device.type == "cuda" and dtype is not None:
        out.to(dtype)
    return out.eval()


# ---- checkpoints -------------------------------------------------------------------------------------------

DCP_DIR = "dcp"


def save_checkpoint(job_dir: Path, step: int, root: TokenPass, opt, tokenizer, state: dict, keep: int = 2) -> Path:
    """``checkpoints/step_<step>/``: ``dcp/`` (sharded model + optimizer, every rank), and from rank 0 the HF export
    (``model.safetensors``, config, tokenizer) and ``trainer_state.pt``; written to ``.tmp_step_<step>`` and renamed
    by rank 0 once all ranks are done (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    from lpreg import checkpoint

    state = {**state, "format": checkpoint.FORMAT, "sharded": True}
    checkpoint.check_plain(state)
    root_dir = job_dir / "checkpoints"
    final, tmp = root_dir / f"step_{step:06d}", root_dir / f".tmp_step_{step:06d}"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    reshard(root)
    msd, osd = get_state_dict(root.policy, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
    full = get_model_state_dict(root.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main():
        root.policy.save_pretrained(tmp, state_dict=full)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / checkpoint.STATE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root_dir.glob("step_*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(path: Path, root: TokenPass, opt) -> None:
    """Load ``path/dcp`` (model and optimizer shards) into the sharded policy and its optimizer, on any number of
    ranks (DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (Path(path) / DCP_DIR).is_dir():
        raise FileNotFoundError(f"{path} has no {DCP_DIR}/ folder: it was written by a single-process run; resume it "
                                "with python -m lpreg.run (no torchrun), or start the distributed run afresh")
    msd, osd = get_state_dict(root.policy, opt)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=str(Path(path) / DCP_DIR))
    set_state_dict(root.policy, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
