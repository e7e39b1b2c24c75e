"""Held-out evaluation: greedy accuracy, sampled avg@k and unbiased pass@k per data source, and their mean.

Protocol per source (``EvalSet.protocol``): ``greedy`` sources are decoded greedily, plus ``eval.samples`` samples
at ``eval.temperature`` only when asked (0 = none); ``sampled`` sources (``task.sampled_sources``, the AIME sets in
the paper) are scored avg@k at their own temperature (T = 0.6, paper §5.1.3). From n samples, pass@k is the unbiased
estimator for k = 1, 2, 4, ... up to n (and n itself). Evaluation requests have their own seeds
(``request_seed(seed, "eval/<step>", i)``), so how often one evaluates never changes the training trajectory.
"""

from __future__ import annotations

import logging
import math

from lpreg.metrics import pass_at_k
from lpreg.rollout import request_seed

log = logging.getLogger(__name__)


def pass_ks(n: int) -> list[int]:
    """The k of pass@k reported from n samples: powers of two below n, and n."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i < n} | {n})


def _correct(engine, grader, encode, problems, max_new_tokens, temperature, batch_size, tag) -> list[float]:
    out = []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s : s + batch_size]
        seeds = [request_seed(*tag, s + i) for i in range(len(chunk))]
        gen = engine.generate(encode([p.prompt for p in chunk]), max_new_tokens, temperature, seeds)
        grades = grader.grade(gen.texts, chunk, gen.finished.tolist())
        if grades.timed_out:
            log.warning("evaluation: %d responses over task.reward_timeout_s scored 0", len(grades.timed_out))
        out += grades.rewards
    return out


def evaluate(engine, task, cfg, encode, max_new_tokens: int, seed: int, step: int, grader) -> dict[str, float]:
    """``eval/<source>/{greedy,avg@n,pass@k,acc}`` and ``eval/mean`` over ``task.eval_sets()``; ``encode`` turns
    prompt texts into token ids; graded by ``grader`` (the run's ``RewardGrader``: same pool, budget and cache)."""
    metrics: dict[str, float] = {}
    for es in task.eval_sets():
        key = f"eval/{es.source}"
        if es.protocol == "greedy":
            metrics[f"{key}/greedy"] = metrics[f"{key}/acc"] = _mean(_correct(
                engine, grader, encode, es.problems, max_new_tokens, 0.0, cfg.batch_size, (seed, f"eval/{step}")))
        n, temp = (es.samples, es.temperature) if es.protocol == "sampled" else (cfg.samples, cfg.temperature)
        if n > 0:
            rep = [p for p in es.problems for _ in range(n)]
            c = _correct(engine, grader, encode, rep, max_new_tokens, temp, cfg.batch_size,
                         (seed, f"eval/{step}/{es.source}"))
            per = [sum(c[i * n : (i + 1) * n]) for i in range(len(es.problems))]
            metrics[f"{key}/avg@{n}"] = _mean(c)
            for k in pass_ks(n):
                metrics[f"{key}/pass@{k}"] = _mean([pass_at_k(n, int(x), k) for x in per])
            if es.protocol == "sampled":
                metrics[f"{key}/acc"] = metrics[f"{key}/avg@{n}"]
    accs = [v for k, v in metrics.items() if k.endswith("/acc")]
    metrics["eval/mean"] = _mean(accs)
    return metrics


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan
