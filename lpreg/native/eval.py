"""Held-out evaluation: greedy accuracy, sampled avg@k and unbiased pass@k per data source, breadth, and their mean.

The problems scored are the task's ``eval.split`` (validation for tuning and selection, test for reporting); the run's
``summary.json`` names the split. Protocol per source (``EvalSet.protocol``): ``greedy`` sources are decoded greedily,
plus ``eval.samples`` samples at ``eval.temperature`` only when asked (0 = none); ``sampled`` sources (the AIME sets in
the paper) are scored avg@k at their own temperature. From n samples per problem, pass@k is the unbiased estimator for
k = 1, 2, 4, ... up to n (and n itself). Where the task can name a correct response's solution
(``Task.solution_key``), the samples also give ``distinct@n`` (distinct correct solutions found per problem) and
``coverage@n`` (their share of the problem's whole solution set).

``eval/mean`` is the mean of the sources' primary scores, diagnostic sources left out (``EvalSet.diagnostic``: e.g.
the spark task's forced-mode accuracy, which measures a mode, not the policy). Evaluation responses have their own
seeds (``request_seed(seed, "eval/<step>/<source>", problem, sample)``), so how often one evaluates never changes the
training trajectory.
"""

from __future__ import annotations

import logging
import math

from lpreg.core.metrics import pass_at_k
from lpreg.native.rollout import request_seed

log = logging.getLogger(__name__)


def pass_ks(n: int) -> list[int]:
    """The k of pass@k reported from n samples: powers of two below n, and n."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i < n} | {n})


def generate_graded(engine, grader, encode, problems, seeds, max_new_tokens, temperature, batch_size):
    """``(rewards, texts)`` of one response per problem (``seeds[i]`` for problem i), in batches."""
    rewards, texts = [], []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s: s + batch_size]
        gen = engine.generate(encode([p.prompt for p in chunk]), max_new_tokens, temperature, seeds[s: s + batch_size])
        grades = grader.grade(gen.texts, chunk, gen.finished.tolist())
        if grades.timed_out:
            log.warning("evaluation: %d responses over task.reward_timeout_s scored 0", len(grades.timed_out))
        rewards += grades.rewards
        texts += gen.texts
    return rewards, texts


def breadth(task, problems, texts: list[str], rewards: list[float], n: int) -> dict[str, float] | None:
    """Mean distinct correct solutions per problem and mean share of each problem's solution set found, from n
    samples per problem (problem-major); None when the task cannot name solutions."""
    distinct, cover = [], []
    for i, problem in enumerate(problems):
        keys = {task.solution_key(texts[i * n + k], problem) for k in range(n) if rewards[i * n + k] > 0.5}
        keys.discard(None)
        total = task.solution_count(problem)
        if total is None:
            return None
        distinct.append(len(keys))
        cover.append(len(keys) / total)
    return {"distinct": _mean(distinct), "coverage": _mean(cover)}


def evaluate(engine, task, cfg, encode, max_new_tokens: int, seed: int, step: int, grader) -> dict[str, float]:
    """``eval/<source>/{greedy,avg@n,pass@k,distinct@n,coverage@n,acc}`` and ``eval/mean`` over the task's
    ``eval.split`` sets; ``encode`` turns prompt texts into token ids; graded by ``grader`` (the run's
    ``RewardGrader``: same pool, budget and cache)."""
    metrics: dict[str, float] = {}
    primary = []
    for es in task.eval_sets(cfg.split):
        key = f"eval/{es.source}"
        if es.protocol == "greedy":
            zeros = [0] * len(es.problems)
            rewards, _ = generate_graded(engine, grader, encode, es.problems, zeros, max_new_tokens, 0.0,
                                         cfg.batch_size)
            metrics[f"{key}/greedy"] = metrics[f"{key}/acc"] = _mean(rewards)
        n, temp = (es.samples, es.temperature) if es.protocol == "sampled" else (cfg.samples, cfg.temperature)
        if n > 0:
            rep = [p for p in es.problems for _ in range(n)]
            tag = f"eval/{step}/{es.source}"
            seeds = [request_seed(seed, tag, i, k) for i in range(len(es.problems)) for k in range(n)]
            c, texts = generate_graded(engine, grader, encode, rep, seeds, max_new_tokens, temp, cfg.batch_size)
            per = [sum(c[i * n: (i + 1) * n]) for i in range(len(es.problems))]
            metrics[f"{key}/avg@{n}"] = _mean(c)
            for k in pass_ks(n):
                metrics[f"{key}/pass@{k}"] = _mean([pass_at_k(n, int(x), k) for x in per])
            if (b := breadth(task, es.problems, texts, c, n)) is not None:
                metrics[f"{key}/distinct@{n}"], metrics[f"{key}/coverage@{n}"] = b["distinct"], b["coverage"]
            if es.protocol == "sampled":
                metrics[f"{key}/acc"] = metrics[f"{key}/avg@{n}"]
        if not es.diagnostic:
            primary.append(metrics[f"{key}/acc"])
    metrics["eval/mean"] = _mean(primary)
    return metrics


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan
