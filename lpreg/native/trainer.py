"""The native RLVR training loop (GRPO-style), one process on a CPU or one GPU, read top to bottom.

One step = one rollout batch (the paper's step):
  rollout -> reward -> advantage -> old pass (targets) -> update (mini-batches) -> metrics -> eval -> checkpoint
(eval every ``eval.every`` steps and checkpoint every ``trainer.checkpoint_every`` steps, each also at the last step;
0 = never, so that every step is training only)
A step's lines reach the local store before its checkpoint is committed (written, logged, synced, renamed), so a
crash at any point leaves a run folder that ``trainer.resume=true`` continues exactly (``lpreg/native/checkpoint.py``).

- rollout: ``prompts_per_step`` prompts × ``group_size`` samples at temperature T (``rollout=``), prompts tokenized
  once by our tokenizer, each response sampled from its own stream seeded from (seed, step, prompt, sample)
  (``lpreg/native/rollout``).
- reward: the task's verifiable reward, graded by the run's ``RewardGrader`` (worker pool with a time budget).
- old pass: one no-grad token pass of π_old over the rollout (``lpreg/native/tokens.py``) gives the old log-probs, the
  policy metrics, every target the regularizer declares (e.g. the Lp-Reg proxy) and the task's decision-point target
  (``lpreg/native/decision.py``) from the same logits chunks: no extra forward pass. The regularizer's rollout targets
  (e.g. δ of Lp-Reg ``scope: batch``) are computed once here, and the gap between the engine's sampled-token
  log-probs and π_old's is logged (optionally corrected by truncated importance sampling, ``rollout.tis_cap``).
- update: the rollout is cut into ``mini_batches`` contiguous mini-batches (no shuffle, as the reference); each is
  cut into micro-batches of at most ``max_tokens_per_micro_batch`` tokens (gradient accumulation). The loss of a
  mini-batch is its exact aggregate (token-mean by default) over all its tokens whatever the micro-batching, and so is
  every diagnostic the loss reports (``lpreg/core/reduce.py``); one AdamW step per mini-batch with grad-norm clipping;
  a non-finite grad norm skips the step with a warning. With ``mini_batches: 1`` the update is on-policy.
The trainer knows no regularizer by name: it calls what the registry entry declares (``lpreg/core/losses``).
Departures from the reference: its FSDP/dynamic-batch machinery is replaced by plain gradient accumulation over
token-budget micro-batches in one process (many GPUs run through the verl backend), and the old log-probs come from
the trainer's model (rollout-engine log-probs are not used in the loss).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from lpreg.core.advantages import grpo_advantages
from lpreg.core.losses import REGULARIZERS, LossInputs, Norm, approx_kl
from lpreg.core.metrics import LOG_HIST_EDGES, log_probability_histograms, logprob_gap, policy_metrics, probability_histogram
from lpreg.core.reduce import Sum, merge, results, step_values
from lpreg.native import checkpoint, decision
from lpreg.native.device import compute_dtype, resolve_device
from lpreg.native.eval import evaluate
from lpreg.native.models import load_policy, prepare
from lpreg.native.rollout import Generation, build_rollout, encode_prompts, group_seeds
from lpreg.native.schedule import apply_lr
from lpreg.native.tokenlog import ActedTokens
from lpreg.native.tokens import MicroBatch, check_head, grid, old_pass_fns, per_token, plan
from lpreg.rewards import RewardGrader
from lpreg.tasks import build_task

log = logging.getLogger(__name__)


class PromptSampler:
    """Epoch-wise shuffled prompt indices from its own seeded RNG (its state is checkpointed)."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.order = n, random.Random(seed), []

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            out.append(self.order.pop())
        return out

    def state(self) -> dict:
        return {"rng": checkpoint.random_state_to_plain(self.rng.getstate()), "order": list(self.order)}

    def load(self, state: dict) -> None:
        self.rng.setstate(checkpoint.random_state_from_plain(state["rng"]))
        self.order = list(state["order"])


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - t0


def spark_ids(tokenizer, sparks: dict[str, list[str]], device) -> dict[str, torch.Tensor]:
    """Token ids of each configured token set (``metrics.sparks``): the first token of each word."""
    return {name: torch.tensor([i for w in words for i in tokenizer.encode(w, add_special_tokens=False)[:1]],
                               device=device) for name, words in sparks.items()}


def micro_batches(gen: Generation, cfg) -> list[list[MicroBatch]]:
    """The rollout's mini-batches (contiguous, ``trainer.mini_batches`` of them), each cut into micro-batches."""
    B = len(gen.response_ids)
    size = B // cfg.trainer.mini_batches
    return [plan(gen, slice(s, s + size), cfg.trainer.max_tokens_per_micro_batch) for s in range(0, B, size)]


@torch.no_grad()
def old_pass(model, minis: list[list[MicroBatch]], fns, cfg) -> list[list[dict]]:
    """π_old's flat per-token values for every micro-batch: log π_old(y), entropy, tail mass, low-probability mass and
    the declared old targets (one no-grad token pass; the same micro-batches the update uses)."""
    was_training = model.training
    model.eval()
    out = [[per_token(model, mb, cfg.rollout.temperature, cfg.trainer.token_chunk, fns,
                      autocast=compute_dtype(cfg.model)) for mb in mini] for mini in minis]
    model.train(was_training)
    return out


def rollout_flat(olds: list[list[dict]], name: str) -> torch.Tensor:
    """One per-token value over the whole rollout, ``[N]`` in the row-major order of the rollout's response mask."""
    return torch.cat([old[name] for mini in olds for old in mini])


def update(model, opt, minis: list[list[MicroBatch]], olds, adv: torch.Tensor, rollout: dict, reg, cfg,
           new_fns: dict | None = None, recorder: ActedTokens | None = None) -> dict:
    """One optimizer step per mini-batch (gradient accumulation over its micro-batches); the step's loss and optim
    metrics, each exact over its mini-batch and averaged over the mini-batches (``lpreg/core/reduce.py``).
    ``new_fns``: the targets of the current policy (default: the regularizer's); ``recorder`` sees each loss's
    inputs (the acted-on tokens)."""
    reg_cfg = cfg.regularizer
    old_names = list(reg.old_targets(reg_cfg))
    new_fns = reg.new_targets(reg_cfg) if new_fns is None else new_fns
    rows, grad_norms, skipped = [], [], 0
    model.train()
    for j, (mini, old_mini) in enumerate(zip(minis, olds)):
        opt.zero_grad(set_to_none=True)
        mask = torch.cat([mb.response_mask.sum(-1) for mb in mini])  # [b_mini] response tokens per row
        norm = Norm(float(mask.sum()), float((mask > 0).sum()), float(len(mask)))
        parts = []
        for mb, old in zip(mini, old_mini):
            new = per_token(model, mb, cfg.rollout.temperature, cfg.trainer.token_chunk, new_fns, old=old, grad=True,
                            autocast=compute_dtype(cfg.model))
            R = mb.response_mask.shape[1]
            inp = LossInputs(log_prob=grid(new["log_prob"], mb), old_log_prob=grid(old["log_prob"], mb),
                             advantages=adv[mb.rows, :R], response_mask=mb.response_mask,
                             old={k: grid(old[k], mb) for k in old_names},
                             new={k: grid(new[k], mb) for k in new_fns}, rollout=rollout, norm=norm)
            loss, m = reg.loss(inp, reg_cfg)
            loss.backward()
            m["loss/total"] = Sum(loss.item())
            m["policy/approx_kl"] = approx_kl(inp.log_prob, inp.old_log_prob, inp.response_mask)
            if recorder is not None:
                m.update(recorder.observe(inp, mb, grid(mb.tokens, mb), j))
            parts.append(m)
        rows.append(results(merge(parts)))
        norm_value = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip))
        if math.isfinite(norm_value):
            opt.step()
            grad_norms.append(norm_value)
        else:
            skipped += 1
            opt.zero_grad(set_to_none=True)
            log.warning("non-finite gradient norm (%s): optimizer step skipped", norm_value)
    out = step_values(rows)
    out["optim/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    out["optim/skipped"] = float(skipped)
    out["optim/lr"] = opt.param_groups[0]["lr"]
    return out


def tis_weights(p_old: torch.Tensor, rollout_log_prob: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(π_old(y) / π_rollout(y), cap) ``[B, R]`` (TRL's ``token_truncate``): they
    scale the advantages, so they weight the policy-gradient term of every regularizer and leave its own terms alone."""
    return (p_old.clamp_min(1e-30).log() - rollout_log_prob).exp().clamp(max=cap)


def _sample_rows(problems, gen: Generation, rewards, p, n: int) -> list[dict]:
    rows = []
    for i in range(min(n, len(problems))):
        m = gen.response_mask[i] > 0
        probs = p[i][m]
        rows.append({"prompt": problems[i].prompt[-200:], "response": gen.texts[i][:500], "answer": problems[i].answer,
                     "reward": float(rewards[i]), "prob_min": round(probs.min().item(), 5) if m.any() else None,
                     "prob_mean": round(probs.mean().item(), 5) if m.any() else None})
    return rows


def train(cfg, job_dir: Path, tracker, resume: checkpoint.Resume | None = None, on_eval=None) -> dict:
    """Run ``cfg.trainer.steps`` RL steps, logging to ``tracker``; continue from ``resume`` if given;
    ``on_eval(step, eval_metrics)`` is called after each held-out evaluation (the sweeper's pruning hook).

    Returns a dict with the eval history and the last metrics (``run.py`` turns it into ``summary.json``).
    """
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    state = resume.state if resume else {}
    start = state.get("step", 0)
    task = build_task(cfg.task)
    if resume is None:
        model, tokenizer, model_path = load_policy(cfg.model, task)
    else:
        model, tokenizer = checkpoint.load_model(resume.path)
        model, model_path = prepare(model, cfg.model), str(resume.path)
    check_head(model)
    reg = REGULARIZERS.get(cfg.regularizer.name)
    spark = decision.spark_id(task, tokenizer)
    old_fns = old_pass_fns(cfg.metrics.tail_kappa, cfg.metrics.lowprob_threshold,
                           {**reg.old_targets(cfg.regularizer), **decision.targets(spark)})
    new_fns = {**reg.new_targets(cfg.regularizer), **decision.targets(spark)}
    train_set = task.train_problems()
    sampler = PromptSampler(len(train_set), cfg.seed)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay,
                            betas=tuple(cfg.trainer.betas))
    if state:
        opt.load_state_dict(state["optimizer"])
        sampler.load(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
    engine = build_rollout(cfg.rollout, model, tokenizer, model_path,
                           cfg.task.max_prompt_len + cfg.task.max_response_len, cfg.seed)
    encode = partial(encode_prompts, tokenizer, max_len=cfg.task.max_prompt_len)
    sparks = spark_ids(tokenizer, cfg.metrics.sparks, device)
    evals: list[dict] = state.get("evals", [])
    P, G, T, max_len = cfg.trainer.prompts_per_step, cfg.rollout.group_size, cfg.rollout.temperature, \
        cfg.task.max_response_len
    last: dict[str, float] = {}
    bad_steps = 0

    with RewardGrader(task, cfg.task) as grader:  # the reward worker pool lives as long as the run

        def run_eval(step: int) -> dict[str, float]:
            res = evaluate(engine, task, cfg.eval, encode, max_len, cfg.seed, step, grader)
            evals.append({"step": step, **res})
            if on_eval is not None:
                on_eval(step, res)
            return res

        if start == 0 and cfg.eval.at_start:
            tracker.log(run_eval(0), step=0)

        bar = tqdm(range(start + 1, cfg.trainer.steps + 1), desc=f"{cfg.arm or reg.name} s{cfg.seed}", unit="step",
                   initial=start, total=cfg.trainer.steps, dynamic_ncols=True)
        for step in bar:
            timer, t0 = Timer(), time.perf_counter()
            with timer("rollout"):
                problems = [train_set[i] for i in sampler.next(P) for _ in range(G)]
                gen = engine.generate(encode([p.prompt for p in problems]), max_len, T, group_seeds(cfg.seed, step, P, G))
            with timer("reward"):
                grades = grader.grade(gen.texts, problems, gen.finished.tolist())
                rewards = torch.tensor(grades.rewards, device=device)
                adv_rows = grpo_advantages(rewards, G)  # [B]
                adv = adv_rows[:, None] * gen.response_mask  # [B, R]
            with timer("targets"):
                minis = micro_batches(gen, cfg)
                olds = old_pass(model, minis, old_fns, cfg)
                old_lp = rollout_flat(olds, "log_prob")  # [N] over the rollout's response tokens
                mask = gen.response_mask > 0
                rollout = reg.rollout_targets(cfg.regularizer, old_lp, adv[mask])
                p = torch.zeros_like(gen.response_mask).masked_scatter(mask, old_lp.exp())  # [B, R] π_old(y)
                per_token_old = {k: rollout_flat(olds, k) for k in ("entropy", "tail_mass", "lowprob_mass")}
                metrics = policy_metrics(per_token_old, p, gen.response_mask, gen.response_ids,
                                         cfg.metrics.lowprob_threshold, sparks)
                metrics.update(decision.rollout_metrics(
                    spark, rollout_flat(olds, decision.TARGET) if spark is not None else None, gen, rewards, adv_rows))
                if gen.rollout_log_prob is not None:
                    metrics.update(logprob_gap(old_lp, gen.rollout_log_prob[mask]))
                    if cfg.rollout.tis_cap:
                        adv = adv * tis_weights(p, gen.rollout_log_prob, cfg.rollout.tis_cap)
            with timer("update"):
                apply_lr(opt, cfg.trainer.lr, step, cfg.trainer.lr_warmup_steps)  # warm-up (lpreg/native/schedule.py)
                recorder = ActedTokens(reg, cfg.regularizer, tokenizer, spark, rewards > 0.5, cfg.metrics.acted_tokens_n)
                metrics.update(update(model, opt, minis, olds, adv, rollout, reg, cfg, new_fns, recorder))
                engine.sync_weights()
            groups = rewards.view(-1, G)
            metrics.update({
                "train/reward_mean": rewards.mean().item(),
                "train/accuracy": (rewards > 0.5).float().mean().item(),
                "train/zero_adv_frac": (groups == groups[:, :1]).all(-1).float().mean().item(),
                "train/response_len_mean": gen.response_mask.sum(-1).mean().item(),
                "train/response_clip_frac": (~gen.finished).float().mean().item(),
            } | grades.metrics("train"))
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.trainer.steps):
                with timer("eval"):
                    metrics.update(run_eval(step))
            n_bins = cfg.metrics.hist_bins
            tracker.log_histogram("policy/sampled_prob_hist", [i / n_bins for i in range(n_bins + 1)],
                                  probability_histogram(p, gen.response_mask, n_bins), step)
            for sign, counts in log_probability_histograms(p, gen.response_mask, adv).items():
                tracker.log_histogram(f"policy/sampled_prob_loghist/{sign}", LOG_HIST_EDGES, counts, step)
            if grades.flags:
                tracker.log_table("reward_flagged", grades.flagged_rows(problems, gen.texts), step)
            if acted := recorder.sample(step):
                tracker.log_table("acted_tokens", acted, step)
            if cfg.metrics.samples_every and step % cfg.metrics.samples_every == 0:
                tracker.log_table("samples", _sample_rows(problems, gen, rewards, p, cfg.metrics.samples_n), step)
            pending = None  # the step's checkpoint, written and verified, committed once the step's lines are on disk
            if cfg.trainer.checkpoint_every and (step % cfg.trainer.checkpoint_every == 0 or step == cfg.trainer.steps):
                with timer("checkpoint"):
                    pending = checkpoint.write(job_dir, step, model, tokenizer, {
                        "step": step, "sampler": sampler.state(), "torch_rng": torch.get_rng_state(), "evals": evals,
                        "wandb_run_id": tracker.run_id, "config": checkpoint.config_record(cfg),
                        "optimizer": opt.state_dict()})
            elapsed = time.perf_counter() - t0
            metrics.update(timer.times)
            metrics["timing/step"] = elapsed
            metrics["perf/tokens_per_s"] = 2 * gen.response_mask.sum().item() / elapsed
            if device.type == "cuda":
                metrics["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            tracker.log(metrics, step)
            if pending is not None:  # crash-consistent: a committed checkpoint's steps are all in the store
                tracker.sync()
                checkpoint.commit(pending, cfg.trainer.keep_checkpoints)
            last = metrics
            bad_steps = bad_steps + 1 if metrics["optim/skipped"] == cfg.trainer.mini_batches else 0
            if bad_steps >= cfg.trainer.max_bad_steps:
                raise FloatingPointError(f"training diverged: every update of the last {bad_steps} steps had a "
                                         "non-finite gradient norm (trainer.max_bad_steps)")
            bar.set_postfix(reward=f"{metrics['train/reward_mean']:.2f}", entropy=f"{metrics['policy/entropy']:.3f}",
                            eval=f"{evals[-1]['eval/mean']:.3f}" if evals else "-")
        bar.close()
    return {"evals": evals, "last": last}
