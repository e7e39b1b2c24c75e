"""Held-out evaluation: greedy accuracy, sampled avg@k and unbiased pass@k per data source, and their mean.

Sampling during evaluation uses its own RNG stream (forked and seeded from the run seed and step), so how often
one evaluates never changes the training trajectory.
"""

from __future__ import annotations

import logging
import math

import torch

from lpreg.metrics import pass_at_k

log = logging.getLogger(__name__)


def _correct(engine, grader, problems, max_new_tokens, temperature, batch_size) -> list[float]:
    out = []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s : s + batch_size]
        gen = engine.generate([p.prompt for p in chunk], max_new_tokens, temperature)
        grades = grader.grade(gen.texts, chunk, gen.finished.tolist())
        if grades.timed_out:
            log.warning("evaluation: %d responses over task.reward_timeout_s scored 0", len(grades.timed_out))
        out += grades.rewards
    return out


def evaluate(engine, task, cfg, max_new_tokens: int, seed: int, grader) -> dict[str, float]:
    """``eval/<source>/{greedy,avg@k,pass@k,acc}`` and ``eval/mean`` over ``task.eval_sets()``, graded by
    ``grader`` (the run's ``lpreg.rewards.RewardGrader``: same pool, budget and cache as training)."""
    metrics: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for es in task.eval_sets():
            key = f"eval/{es.source}"
            if es.protocol == "greedy":
                metrics[f"{key}/greedy"] = metrics[f"{key}/acc"] = _mean(
                    _correct(engine, grader, es.problems, max_new_tokens, 0.0, cfg.batch_size))
            k, temp = (es.samples, es.temperature) if es.protocol == "sampled" else (cfg.samples, cfg.temperature)
            if k > 0:
                rep = [p for p in es.problems for _ in range(k)]
                c = _correct(engine, grader, rep, max_new_tokens, temp, cfg.batch_size)
                per = [sum(c[i * k : (i + 1) * k]) for i in range(len(es.problems))]
                metrics[f"{key}/avg@{k}"] = _mean(c)
                metrics[f"{key}/pass@{k}"] = _mean([pass_at_k(k, int(x), k) for x in per])
                if es.protocol == "sampled":
                    metrics[f"{key}/acc"] = metrics[f"{key}/avg@{k}"]
    accs = [v for k, v in metrics.items() if k.endswith("/acc")]
    metrics["eval/mean"] = _mean(accs)
    return metrics


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan
