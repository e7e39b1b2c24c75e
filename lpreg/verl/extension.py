"""lpreg's extension of verl's actor: our loss and per-token targets inside verl's own engine, no verl code changed.

verl imports this module in every actor process through its hook for external code
(``actor_rollout_ref.model.external_lib=lpreg.verl.extension``): importing it registers lpreg's losses in verl's
policy-loss registry (``lpreg/verl/losses.py``). The actor itself is :class:`LpregActorRolloutRefWorker`, verl's
``ActorRolloutRefWorker`` with three methods extended (``lpreg/verl/launch.py`` makes verl's trainer use it):

- ``init_model``: after verl has built the actor, its loss object becomes :func:`actor_loss` (bound to the run's
  :class:`ActorPlan`) instead of verl's ``ppo_loss``, through verl's own ``set_loss_fn``.
- ``compute_log_prob`` (π_old's no-grad pass): the batch is flagged so that verl's FSDP engine calls the loss object
  with the full-vocabulary logits of every micro-batch (``distillation_use_topk``: verl's hook for top-k
  distillation, reused here; ``compute_loss``), and ``actor_loss`` returns π_old's per-token targets from them
  (``lpreg/verl/targets.py``). They come back from verl as model outputs under ``lpreg_old_*`` keys, and verl's
  trainer (``trainer.use_v1``: its TransferQueue keeps every field a worker writes) hands them to the update with
  the rest of the batch.
- ``update_actor``: the per-rollout values the regularizer declares (Lp-Reg's δ for ``scope: batch``) are computed
  once over the whole rollout, all data-parallel ranks together, and put on the batch; the hook is flagged only
  when the arm needs the current logits (Lp-Reg's forward KL). For every micro-batch ``actor_loss`` then builds our
  ``LossInputs`` (response-aligned, as verl's ``ppo_loss`` builds its own) and calls the arm's loss through verl's
  registry (``actor.policy_loss.loss_mode``).

Metrics. Our losses return mergeable values (``lpreg.core.reduce``); verl merges a loss's metrics over micro-batches
and ranks with ``verl.utils.metric.Metric`` (SUM: the mean over ranks of the sum over micro-batches; MAX: the max of
all) and its trainer then averages each metric over the step's updates (mini-batches). So each value is logged as
verl metrics under ``_lpreg/<name>/...`` and put back together by ``lpreg/verl/readback.py``:

- ``Sum(v)`` -> ``<name>/sum``, SUM of ``v × dp_size`` (the mean over ranks is the total): the update's total, as
  the native trainer logs it, and the mean over the step's updates, as the native trainer logs a step.
- ``Mean(total, weight)`` -> ``<name>/total`` and ``<name>/weight``, both SUM (× dp_size); the read-back divides
  them: the update's exact mean over all its micro-batches and ranks. With several updates per step the quotient is
  the mean pooled over the step's updates, where the native trainer takes the mean of the updates' means: the same
  on-policy (one update per step) and whenever the updates have equal weights.
- ``Max(v)`` -> ``<name>/peak``, MAX (−inf stands for "none", read back as NaN): the update's max; with several
  updates the step's value is verl's mean of the updates' maxima, NaN as soon as one update had none.
- Per-rollout values (``policy/*``, ``train/zero_adv_frac``: π_old's statistics, which the native trainer computes
  once per rollout) are accumulated over the update's micro-batches under ``_lpreg_rollout/``: every response token
  is in exactly one micro-batch of one update, so the pooled mean is the rollout's mean, and a count is the mean
  over updates times the number of updates (the read-back multiplies).
Names must not contain ``max`` or ``min``: verl's trainer reduces such keys with max / min instead of the mean.

How it departs from the native trainer: micro-batches are verl's (dynamic batch size: verl cuts each mini-batch
into ⌈tokens / ``ppo_max_token_len_per_gpu``⌉ micro-batches balanced by sequence length), so Lp-Reg
``scope: micro_batch``, 80/20 and the covariance arms select within verl's micro-batches, as the reference (itself a
verl fork) did; π_old's entropy, log-probabilities and targets come from verl's log-prob pass; the per-token values
use verl's logits (bf16 on GPU, cast to fp32 per chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from lpreg.core.losses import REGULARIZERS, approx_kl
from lpreg.core.reduce import Max, Mean, Reducible, Sum
from lpreg.verl import losses
from lpreg.verl.readback import ROLLOUT_NS, UPDATE_NS
from lpreg.verl.targets import NEW, OLD, new_fns, old_fns, per_token

PHASE = "lpreg_phase"  # non-tensor key of lpreg's batches: "old" (π_old's log-prob pass) | "update"
ROLLOUT = "lpreg_rollout"  # non-tensor key: the rollout's values (Regularizer.rollout_targets)

losses.register()


@dataclass(frozen=True)
class ActorPlan:
    """What the actor needs to know about the run (built by ``lpreg/verl/config.py``, shipped in verl's config)."""

    reg_cfg: Any  # the arm's config object (its schema in lpreg.core.losses)
    tail_kappa: float  # metrics.tail_kappa
    lowprob_threshold: float  # metrics.lowprob_threshold
    token_chunk: int  # trainer.token_chunk: logits rows per chunk in the hook


def plan_from_dict(d: dict) -> ActorPlan:
    """The plan from the plain dict in verl's config (``actor_rollout_ref.lpreg``)."""
    reg = dict(d["regularizer"])
    schema = REGULARIZERS.get(reg["name"]).config
    return ActorPlan(schema(**reg), float(d["tail_kappa"]), float(d["lowprob_threshold"]), int(d["token_chunk"]))


def has_rollout_targets(reg_cfg) -> bool:
    """Whether the arm declares per-rollout values with this config (it returns any key for an empty rollout)."""
    entry = REGULARIZERS.get(reg_cfg.name)
    return bool(entry.rollout_targets(reg_cfg, torch.zeros(0), torch.zeros(0)))


def needs_current_logits(reg_cfg) -> bool:
    return bool(new_fns(reg_cfg))


# ---- the loss object -------------------------------------------------------------------------------------------


def actor_loss(config, model_output=None, data=None, dp_group=None, student_logits=None, *, plan: ActorPlan):
    """verl's actor loss object (module docstring): the logits hook when ``student_logits`` is given, a zero loss in
    the log-prob pass, our loss in the update."""
    from verl.utils import tensordict_utils as tu

    phase = tu.get_non_tensor_data(data=data, key=PHASE, default=None)
    if phase not in ("old", "update"):
        raise RuntimeError(f"lpreg's actor loss got a batch without its {PHASE!r} flag ({phase!r}): it runs only "
                           "under lpreg's actor worker (lpreg.verl.extension.LpregActorRolloutRefWorker)")
    if student_logits is not None:
        if phase == "old":
            return per_token(old_fns(plan.reg_cfg, plan.tail_kappa, plan.lowprob_threshold), student_logits, data,
                             plan.token_chunk, OLD)
        return per_token(new_fns(plan.reg_cfg), student_logits, data, plan.token_chunk, NEW)
    if phase == "old":
        return model_output["log_probs"].values().new_zeros(()), {}
    return update_loss(config, model_output, data, plan)


def _response(tensor, data):
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(tensor, data)


def update_inputs(config, model_output, data, plan: ActorPlan):
    """verl's micro-batch as our loss's inputs: ``(old_log_prob, log_prob, advantages, mask, is_weights, call)``,
    all response-aligned ``[b, R]`` (the layout verl's ``ppo_loss`` builds)."""
    from verl.utils import tensordict_utils as tu

    log_prob = _response(model_output["log_probs"], data)  # [b, R] with gradient
    fields = ["response_mask", "old_log_probs", "advantages"] + (["rollout_is_weights"] if "rollout_is_weights" in
                                                                   data else [])
    d = data.select(*fields).to_padded_tensor()
    reg_cfg = plan.reg_cfg
    entry = REGULARIZERS.get(reg_cfg.name)
    old = {}
    for name in [*old_fns(reg_cfg, plan.tail_kappa, plan.lowprob_threshold)]:
        if OLD + name not in data:
            raise RuntimeError(f"the update batch holds no {OLD + name!r} from π_old's log-prob pass: lpreg needs "
                               "verl's trainer to keep the log-prob pass outputs (trainer.use_v1=true) and lpreg's "
                               "actor worker for both passes")
        old[name] = _response(data[OLD + name], data)
    new = {}
    if "entropy" in entry.new_targets(reg_cfg):
        new["entropy"] = _response(model_output["entropy"], data)  # verl's entropy of the current policy, with grad
    if needs_current_logits(reg_cfg):  # the dense forward KL as one survivor with q = 1 and log-prob −KL (its
        kl = _response(model_output[NEW + "forward_kl"], data)  # value and gradient are the KL itself)
        old |= {"proxy_q": torch.ones_like(kl)[..., None], "proxy_idx": torch.zeros_like(kl, dtype=torch.long)[..., None]}
        new["proxy_logp"] = -kl[..., None]
    rollout = tu.get_non_tensor_data(data=data, key=ROLLOUT, default=None) or {}
    call = losses.LpregCall(reg_cfg, old=old, new=new, rollout=dict(rollout))
    return d["old_log_probs"], log_prob, d["advantages"], d["response_mask"].to(torch.bool), d.get(
        "rollout_is_weights", None), call


def update_loss(config, model_output, data, plan: ActorPlan):
    """One micro-batch of an update: the arm's loss through verl's registry and our metrics as verl metrics."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    for key in ("dp_size", "batch_num_tokens", "global_batch_size"):  # as verl's ppo_loss does
        config.global_batch_info[key] = data[key]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    old_lp, log_prob, adv, mask, weights, call = update_inputs(config, model_output, data, plan)
    arm, mode = plan.reg_cfg.name, config.policy_loss.loss_mode
    ours = get_policy_loss_fn(losses.loss_mode(arm))
    args = (old_lp, log_prob, adv, mask, config.loss_agg_mode, config, weights)
    if mode == losses.loss_mode(arm):
        loss, metrics = ours(*args, lpreg=call)
    elif mode == losses.VERL_OWN.get(arm):  # verl's own loss gives the gradient; ours, under the same random state,
        cuda = [log_prob.device] if log_prob.device.type == "cuda" else []  # gives the metrics
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            _, metrics = ours(*args, lpreg=call)
        loss, _ = get_policy_loss_fn(mode)(*args)
    else:
        raise ValueError(f"actor.policy_loss.loss_mode={mode!r} does not run regularizer={arm}: use "
                         f"{losses.verl_loss_mode(arm)!r} (lpreg/verl/losses.py)")
    _, dp = losses.batch_norm(config)
    m = mask.to(log_prob.dtype)
    metrics = dict(metrics)
    metrics["loss/total"] = Sum(loss.item())
    metrics["policy/approx_kl"] = losses.scaled({"k": approx_kl(log_prob, old_lp, m)}, dp)["k"]
    out = to_verl(metrics, UPDATE_NS) | to_verl(losses.scaled(rollout_stats(call.old, old_lp, adv, m, plan), dp),
                                                 ROLLOUT_NS)
    return loss, out


def rollout_stats(old: dict, old_lp, adv, mask, plan: ActorPlan) -> dict[str, Reducible]:
    """π_old's ``policy/*`` statistics and ``train/zero_adv_frac`` over this micro-batch's responses, mergeable."""
    n = mask.sum().item()
    p = old_lp.detach().exp()  # [b, R] π_old(y)
    low = (p < plan.lowprob_threshold).to(mask.dtype) * mask
    has = mask.sum(-1) > 0  # [b]
    zero = ((adv.abs() * mask).sum(-1) == 0) & has  # responses with zero advantage: their group's rewards are equal
    tok = lambda x: Mean((x * mask).sum().item(), n)
    return {"policy/entropy": tok(old["entropy"]), "policy/tail_mass": tok(old["tail_mass"]),
            "policy/lowprob_mass": tok(old["lowprob_mass"]), "policy/sampled_prob_mean": tok(p),
            "policy/lowprob_frac": Mean(low.sum().item(), n), "policy/lowprob_count": Sum(low.sum().item()),
            "train/zero_adv_frac": Mean(float(zero.sum()), float(has.sum()))}


def emitted_names(name: str, value: Reducible, ns: str) -> list[str]:
    """The verl metric keys that carry one of our values (module docstring)."""
    if isinstance(value, Sum):
        return [f"{ns}{name}/sum"]
    if isinstance(value, Mean):
        return [f"{ns}{name}/total", f"{ns}{name}/weight"]
    return [f"{ns}{name}/peak"]


def to_verl(metrics: dict[str, Reducible], ns: str) -> dict:
    """Our values as verl ``Metric`` objects (module docstring)."""
    from verl.utils.metric import AggregationType, Metric

    out = {}
    for name, v in metrics.items():
        keys = emitted_names(name, v, ns)
        if any("max" in k or "min" in k for k in keys):
            raise ValueError(f"metric {name!r}: verl's trainer reduces keys holding 'max' or 'min' by name")
        if isinstance(v, Sum):
            out[keys[0]] = Metric(AggregationType.SUM, float(v.value))
        elif isinstance(v, Mean):
            out[keys[0]] = Metric(AggregationType.SUM, float(v.total))
            out[keys[1]] = Metric(AggregationType.SUM, float(v.weight))
        elif isinstance(v, Max):
            out[keys[0]] = Metric(AggregationType.MAX, -math.inf if math.isnan(v.value) else float(v.value))
        else:
            raise TypeError(f"metric {name!r} is a {type(v).__name__}, not a lpreg.core.reduce value")
    return out


# ---- the batches of the two passes ----------------------------------------------------------------------------


def mark_old_pass(data) -> None:
    """Flag π_old's log-prob pass: verl calls the loss object with the logits, and with the outputs (zero loss)."""
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(data, **{"compute_loss": True, "distillation_use_topk": True, PHASE: "old"})


def _flat_response(t, mask):
    return t.values() if t.is_nested else t[mask > 0]


def rollout_values(data, reg_cfg, dp_group=None) -> dict:
    """The arm's per-rollout values over all response tokens of the rollout (every rank's share)."""
    if not has_rollout_targets(reg_cfg):
        return {}
    mask = data["response_mask"]
    old_lp = _flat_response(data["old_log_probs"], mask).detach().float().cpu()
    adv = _flat_response(data["advantages"], mask).detach().float().cpu()
    if dp_group is not None and torch.distributed.get_world_size(dp_group) > 1:
        parts = [None] * torch.distributed.get_world_size(dp_group)
        torch.distributed.all_gather_object(parts, (old_lp, adv), group=dp_group)
        old_lp, adv = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return REGULARIZERS.get(reg_cfg.name).rollout_targets(reg_cfg, old_lp, adv)


def mark_update(data, plan: ActorPlan, dp_group=None) -> None:
    """Flag an update batch: the rollout's values, the hook only if the arm needs the current logits (then also
    verl's entropy, whose flag turns off the in-place backward of verl's log-prob kernel, which would overwrite the
    logits the hook's backward reads)."""
    from verl.utils import tensordict_utils as tu

    hook = needs_current_logits(plan.reg_cfg)
    entropy = hook or "entropy" in REGULARIZERS.get(plan.reg_cfg.name).new_targets(plan.reg_cfg)
    flags = {PHASE: "update", ROLLOUT: rollout_values(data, plan.reg_cfg, dp_group), "distillation_use_topk": hook}
    if entropy:
        flags["calculate_entropy"] = True
    tu.assign_non_tensor(data, **flags)


# ---- the worker ------------------------------------------------------------------------------------------------


def _worker_class():
    from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
    from verl.workers.engine_workers import ActorRolloutRefWorker

    class LpregActorRolloutRefWorker(ActorRolloutRefWorker):
        """verl's actor/rollout worker with lpreg's loss and flags (module docstring)."""

        @register(dispatch_mode=Dispatch.ONE_TO_ALL)
        def init_model(self):
            super().init_model()
            if self.actor is not None:
                from omegaconf import OmegaConf

                self.lpreg_plan = plan_from_dict(OmegaConf.to_container(self.config.lpreg, resolve=True))
                self.loss_fn = partial(actor_loss, config=self.loss_fn.keywords["config"], plan=self.lpreg_plan)
                self.actor.set_loss_fn(self.loss_fn)

        @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
        def compute_log_prob(self, data):
            mark_old_pass(data)
            output = self.actor.infer_batch(data)
            return output.cpu() if output is not None else None

        @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
        def update_actor(self, data):
            mark_update(data, self.lpreg_plan, self.actor.engine.get_data_parallel_group())
            output = self.actor.train_mini_batch(data=data)
            return output.cpu() if output is not None else None

    LpregActorRolloutRefWorker.__qualname__ = "LpregActorRolloutRefWorker"  # pickled by reference (__getattr__)
    return LpregActorRolloutRefWorker


def __getattr__(name: str):
    if name == "LpregActorRolloutRefWorker":  # built on first use: importing verl's workers is slow
        cls = _worker_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
