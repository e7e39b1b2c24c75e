"""The RLVR training loop (GRPO-style), read top to bottom.

One step = one rollout batch (the paper's step):
  rollout  ->  reward  ->  advantage  ->  targets  ->  update (mini-batches)  ->  metrics  ->  eval  ->  checkpoint

- rollout: ``prompts_per_step`` prompts × ``group_size`` samples at temperature T (``conf/rollout``).
- targets: one no-grad forward of π_old gives the old log-probs, the policy metrics, and whatever extra targets
  the regularizer asks for (``loss_needs``), e.g. the Lp-Reg proxy, from the same logits: no extra forward.
- update: the rollout is cut into ``mini_batches`` contiguous mini-batches (no shuffle, as the reference); one
  AdamW step each, with grad-norm clipping; a non-finite grad norm skips the step with a warning. With
  ``mini_batches: 1`` the update is on-policy. ``micro_batch_size`` splits a mini-batch for gradient
  accumulation (each micro-batch's loss weighted by its share of sequences, as the reference).
Departures from the reference: none in the loss path; the reference's FSDP/dynamic-batch machinery is replaced by
plain gradient accumulation, and the old log-probs come from our trainer model (no separate rollout engine
log-probs are used).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lpreg import checkpoint
from lpreg.advantages import grpo_advantages
from lpreg.eval import evaluate
from lpreg.losses import LossInputs, approx_kl, get_loss, loss_needs
from lpreg.losses.lpreg import rollout_threshold
from lpreg.metrics import masked_mean_value, mean_metrics, probability_histogram, token_entropy
from lpreg.models import load_policy, load_pretrained
from lpreg.proxy import proxy_log_prob, tail_mass
from lpreg.rewards import RewardGrader
from lpreg.rollout import Generation, build_rollout
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
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


@dataclass
class Targets:
    old_log_prob: torch.Tensor  # [B, R]
    proxy_log_prob: torch.Tensor | None  # [B, R]
    old_logits: torch.Tensor | None  # [B, R, V]
    sampled_prob: torch.Tensor  # [B, R] π_old(y)
    lowprob_threshold: float | None = None


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - t0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def forward_logits(model, gen: Generation, rows: slice, temperature: float) -> torch.Tensor:
    """Temperature-scaled logits at the response positions of ``rows``: ``[b, R, V]``."""
    prompt, resp = gen.prompt_ids[rows], gen.response_ids[rows]
    ids = torch.cat([prompt, resp], 1)  # [b, P+R]
    attn = torch.cat([gen.prompt_mask[rows], torch.ones_like(resp)], 1)  # [b, P+R]
    pos = (attn.cumsum(-1) - 1).clamp_min(0)  # left padding: positions start at the first real token
    R = resp.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1).logits[:, :-1]
    return logits.float() / temperature  # [b, R, V]


def _chunks(n: int, size: int):
    size = size or n
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def spark_ids(tokenizer, sparks: dict[str, list[str]], device) -> dict[str, torch.Tensor]:
    """Token ids of each configured token set (``metrics.sparks``): the first token of each word."""
    return {name: torch.tensor([i for w in words for i in tokenizer.encode(w, add_special_tokens=False)[:1]],
                               device=device) for name, words in sparks.items()}


@torch.no_grad()
def compute_targets(model, gen: Generation, adv: torch.Tensor, temperature: float, needs: frozenset[str],
                    reg_cfg: dict, mcfg, micro: int, sparks: dict[str, torch.Tensor]) -> tuple[Targets, dict[str, float]]:
    """π_old log-probs, policy metrics and the regularizer's extra targets from one forward pass."""
    was_training = model.training
    model.eval()
    mask = gen.response_mask
    old_lp, ent, tail, proxy, old_logits = [], [], [], [], []
    for rows in _chunks(len(mask), micro):
        logits = forward_logits(model, gen, rows, temperature)  # [b, R, V]
        old_lp.append(torch.log_softmax(logits, -1).gather(-1, gen.response_ids[rows, :, None])[..., 0])
        ent.append(token_entropy(logits))
        tail.append(tail_mass(logits, mcfg.tail_kappa))
        if "proxy" in needs:
            proxy.append(proxy_log_prob(logits, gen.response_ids[rows], reg_cfg["kappa"], reg_cfg.get("mode", "minp")))
        if "old_logits" in needs:
            old_logits.append(logits)
    model.train(was_training)
    old_lp = torch.cat(old_lp)  # [B, R]
    p = old_lp.exp()
    targets = Targets(old_lp, torch.cat(proxy) if proxy else None, torch.cat(old_logits) if old_logits else None, p)
    if "lowprob_threshold" in needs:
        targets.lowprob_threshold = rollout_threshold(old_lp, adv, mask, reg_cfg)
    metrics = {
        "policy/entropy": masked_mean_value(torch.cat(ent), mask),
        "policy/tail_mass": masked_mean_value(torch.cat(tail), mask),
        "policy/sampled_prob_mean": masked_mean_value(p, mask),
        "policy/lowprob_frac": masked_mean_value((p < mcfg.lowprob_threshold).float(), mask),
    }
    for name, ids in sparks.items():
        hit = torch.isin(gen.response_ids, ids).float() * mask
        metrics[f"sparks/{name}/prob"] = masked_mean_value(p, hit)
    return targets, metrics


def update(model, opt, gen: Generation, adv, tg: Targets, loss_fn, reg_cfg, needs, cfg) -> dict[str, float]:
    """One pass over the rollout in ``mini_batches`` optimizer steps; returns mean loss/optim metrics."""
    B = len(gen.response_ids)
    size = B // cfg.trainer.mini_batches
    rows_metrics, grad_norms, skipped = [], [], 0
    model.train()
    for mb in _chunks(B, size):
        opt.zero_grad(set_to_none=True)
        for rows in [slice(mb.start + s.start, mb.start + s.stop) for s in _chunks(size, cfg.trainer.micro_batch_size)]:
            logits = forward_logits(model, gen, rows, cfg.rollout.temperature)  # [b, R, V] with grad
            lp = torch.log_softmax(logits, -1).gather(-1, gen.response_ids[rows, :, None])[..., 0]  # [b, R]
            inp = LossInputs(
                log_prob=lp, old_log_prob=tg.old_log_prob[rows], advantages=adv[rows],
                response_mask=gen.response_mask[rows],
                proxy_log_prob=tg.proxy_log_prob[rows] if tg.proxy_log_prob is not None else None,
                entropy=token_entropy(logits) if "entropy" in needs else None,
                logits=logits if "logits" in needs else None,
                old_logits=tg.old_logits[rows] if tg.old_logits is not None else None,
                lowprob_threshold=tg.lowprob_threshold,
            )
            loss, m = loss_fn(inp, reg_cfg)
            (loss * (rows.stop - rows.start) / size).backward()
            m["loss/total"] = loss.item()
            m["policy/approx_kl"] = approx_kl(lp, inp.old_log_prob, inp.response_mask)
            rows_metrics.append(m)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip).item()
        if math.isfinite(norm):
            opt.step()
            grad_norms.append(norm)
        else:
            skipped += 1
            opt.zero_grad(set_to_none=True)
            log.warning("non-finite gradient norm (%s): optimizer step skipped", norm)
    out = mean_metrics(rows_metrics)
    out["optim/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    out["optim/skipped"] = float(skipped)
    out["optim/lr"] = opt.param_groups[0]["lr"]
    return out


def _sample_rows(problems, gen: Generation, rewards, p, n: int) -> list[dict]:
    rows = []
    for i in range(min(n, len(problems))):
        m = gen.response_mask[i] > 0
        probs = p[i][m]
        rows.append({"prompt": problems[i].prompt[-200:], "response": gen.texts[i][:500], "answer": problems[i].answer,
                     "reward": float(rewards[i]), "prob_min": round(probs.min().item(), 5) if m.any() else None,
                     "prob_mean": round(probs.mean().item(), 5) if m.any() else None})
    return rows


def validate(cfg) -> None:
    """Config checks that Hydra's types cannot express; each message names the key to change."""
    t = cfg.trainer
    B = t.prompts_per_step * cfg.rollout.group_size
    if t.mini_batches < 1 or B % t.mini_batches:
        raise ValueError(f"trainer.mini_batches={t.mini_batches} must divide prompts_per_step × group_size = {B}")
    if t.micro_batch_size and (B // t.mini_batches) % t.micro_batch_size:
        raise ValueError(f"trainer.micro_batch_size={t.micro_batch_size} must divide the mini-batch ({B // t.mini_batches})")
    if cfg.rollout.temperature <= 0:
        raise ValueError("rollout.temperature must be > 0 for RL rollouts")


def train(cfg, job_dir: Path, make_tracker, on_eval=None) -> dict:
    """Run ``cfg.trainer.steps`` RL steps; ``make_tracker(run_id, resume_step)`` builds the tracker;
    ``on_eval(step, eval_metrics)`` is called after each held-out evaluation (the sweeper's pruning hook).

    Returns a dict with the eval history and the last metrics (``run.py`` turns it into ``summary.json``).
    """
    validate(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    start, state = 0, {}
    ckpt = checkpoint.latest(job_dir) if cfg.trainer.resume else None
    if ckpt is not None:
        state = checkpoint.load_state(ckpt)
        start = state["step"]
        log.info("resuming from %s (step %d)", ckpt, start)
    tracker = make_tracker(state.get("wandb_run_id"), start)  # first, so that a bad model or task is tracked too
    task = build_task(cfg.task)
    grader = RewardGrader(task, cfg.task)  # reward worker pool, one per run (lpreg/rewards.py)
    try:
        model, tokenizer, model_path = load_policy(cfg.model, task) if ckpt is None else (*load_pretrained(ckpt), str(ckpt))
        reg_cfg = dataclasses.asdict(cfg.regularizer)  # losses take a plain mapping (lpreg.losses docstring)
        loss_fn, needs = get_loss(reg_cfg["name"]), loss_needs(reg_cfg["name"], reg_cfg)
        sampler = PromptSampler(len(task.train_problems()), cfg.seed)
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay,
                                betas=tuple(cfg.trainer.betas))
        if state:
            opt.load_state_dict(state["optimizer"])
            sampler.load(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
        engine = build_rollout(cfg.rollout, model, tokenizer, model_path)
        sparks = spark_ids(tokenizer, cfg.metrics.sparks, device)
        evals: list[dict] = state.get("evals", [])
        G, T, max_len = cfg.rollout.group_size, cfg.rollout.temperature, cfg.task.max_response_len
        last: dict[str, float] = {}
        bad_steps = 0

        def run_eval(step: int) -> dict[str, float]:
            res = evaluate(engine, task, cfg.eval, max_len, seed=cfg.seed * 100_003 + step, grader=grader)
            evals.append({"step": step, **res})
            if on_eval is not None:
                on_eval(step, res)
            return res

        if start == 0 and cfg.eval.at_start:
            tracker.log(run_eval(0), step=0)

        bar = tqdm(range(start + 1, cfg.trainer.steps + 1), desc=f"{reg_cfg['name']} s{cfg.seed}", unit="step",
                   initial=start, total=cfg.trainer.steps, dynamic_ncols=True)
        for step in bar:
            timer, t0 = Timer(), time.perf_counter()
            with timer("rollout"):
                problems = [task.train_problems()[i] for i in sampler.next(cfg.trainer.prompts_per_step) for _ in range(G)]
                gen = engine.generate([p.prompt for p in problems], max_len, T)
            with timer("reward"):
                grades = grader.grade(gen.texts, problems, gen.finished.tolist())
                rewards = torch.tensor(grades.rewards, device=device)
                adv = grpo_advantages(rewards, G)[:, None] * gen.response_mask  # [B, R]
            with timer("targets"):
                tg, metrics = compute_targets(model, gen, adv, T, needs, reg_cfg, cfg.metrics,
                                              cfg.trainer.micro_batch_size, sparks)
            with timer("update"):
                metrics.update(update(model, opt, gen, adv, tg, loss_fn, reg_cfg, needs, cfg))
                engine.sync_weights()
            groups = rewards.view(-1, G)
            lengths = gen.response_mask.sum(-1)
            metrics.update({
                "train/reward_mean": rewards.mean().item(),
                "train/accuracy": (rewards > 0.5).float().mean().item(),
                "train/zero_adv_frac": (groups == groups[:, :1]).all(-1).float().mean().item(),
                "train/response_len_mean": lengths.mean().item(),
                "train/response_clip_frac": (~gen.finished).float().mean().item(),
            } | grades.metrics("train"))
            if cfg.eval.every and step % cfg.eval.every == 0 or step == cfg.trainer.steps:
                with timer("eval"):
                    metrics.update(run_eval(step))
            n_bins = cfg.metrics.hist_bins
            tracker.log_histogram("policy/sampled_prob_hist", [i / n_bins for i in range(n_bins + 1)],
                                  probability_histogram(tg.sampled_prob, gen.response_mask, n_bins), step)
            if grades.timed_out:
                tracker.log_table("reward_timeouts", grades.timeout_rows(problems, gen.texts), step)
            if cfg.metrics.samples_every and step % cfg.metrics.samples_every == 0:
                tracker.log_table("samples", _sample_rows(problems, gen, rewards, tg.sampled_prob,
                                                          cfg.metrics.samples_n), step)
            if cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0 or step == cfg.trainer.steps:
                with timer("checkpoint"):
                    checkpoint.save(job_dir, step, model, tokenizer, {
                        "step": step, "optimizer": opt.state_dict(), "sampler": sampler.state(),
                        "torch_rng": torch.get_rng_state(), "evals": evals, "wandb_run_id": tracker.run_id})
            elapsed = time.perf_counter() - t0
            metrics.update(timer.times)
            metrics["timing/step"] = elapsed
            metrics["perf/tokens_per_s"] = 2 * gen.response_mask.sum().item() / elapsed
            tracker.log(metrics, step)
            last = metrics
            bad_steps = bad_steps + 1 if metrics["optim/skipped"] == cfg.trainer.mini_batches else 0
            if bad_steps >= cfg.trainer.max_bad_steps:
                raise FloatingPointError(f"training diverged: every update of the last {bad_steps} steps had a non-finite "
                                         "gradient norm (trainer.max_bad_steps)")
            bar.set_postfix(reward=f"{metrics['train/reward_mean']:.2f}", entropy=f"{metrics['policy/entropy']:.3f}",
                            eval=f"{evals[-1]['eval/mean']:.3f}" if evals else "-")
        bar.close()
        return {"evals": evals, "last": last, "tracker": tracker, "model_path": model_path}
    finally:
        grader.close()
