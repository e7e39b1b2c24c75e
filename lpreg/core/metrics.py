"""Every metric name lpreg logs, with a one-line definition, and the pure functions that compute them.

The names are part of the interface: analysis, W&B dashboards and sweeps read them.
``<source>`` is an evaluation data source, ``<phase>`` a trainer phase, ``<name>`` a configured token set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

METRICS: dict[str, str] = {
    "policy/entropy": "full-vocabulary entropy of π_old at T on the rollout's response tokens, token-mean",
    "policy/lowprob_frac": "fraction of sampled response tokens with π_old(y) < metrics.lowprob_threshold",
    "policy/lowprob_count": "number of sampled response tokens of the rollout with π_old(y) < metrics.lowprob_threshold",
    "policy/lowprob_mass": "mean over response positions of π_old's full-vocabulary mass on tokens below "
                           "metrics.lowprob_threshold (the exact expectation that policy/lowprob_frac samples)",
    "policy/tail_mass": "mean over response positions of the mass the min-p filter (metrics.tail_kappa) removes, 1-Z",
    "policy/sampled_prob_mean": "mean π_old(y) of sampled response tokens",
    "policy/approx_kl": "k3 estimate of KL(π_θ‖π_old) on sampled tokens, mean over mini-batches",
    "policy/clipfrac": "fraction of response tokens whose PPO clip is active (loss-specific), mean over mini-batches",
    "lpreg/delta": "selection threshold: the largest π_θ(y) among selected candidates",
    "lpreg/candidates": "number of selected low-probability negative tokens (k, or 0 when k <= 1), per mini-batch",
    "lpreg/regularized": "number of candidates with π_θ(y) < π_proxy(y), i.e. regularized, per mini-batch",
    "lpreg/reg_ratio": "regularized / candidates",
    "lpreg/div_mean": "mean divergence D_t (k3, or the forward KL with divergence=forward_kl) over regularized tokens",
    "lpreg/proxy_ratio_mean": "mean π_proxy(y)/π_θ(y) over regularized tokens",
    "lpreg/noise_frac": "fraction of candidates whose token the min-p filter removed (proxy ~ 0)",
    "kl_cov/selected": "tokens KL-Cov penalized, per mini-batch",
    "highent/kept": "tokens the 80/20 rule kept, per mini-batch",
    "rollout/logprob_diff_mean": "mean |log π_rollout(y) − log π_old(y)|: the rollout engine's sampled-token log-probs "
                                 "against the trainer's",
    "rollout/logprob_diff_max": "max of the same over the rollout's response tokens",
    "rollout/logprob_diff_frac": "fraction of response tokens where that gap exceeds 0.1",
    "train/reward_mean": "mean sequence reward of the rollout",
    "train/accuracy": "fraction of rollout responses graded correct",
    "train/zero_adv_frac": "share of prompt groups whose rewards are all equal (zero advantage)",
    "train/response_len_mean": "mean response length in tokens (end token included)",
    "train/response_clip_frac": "share of responses that hit the length limit without the end token",
    "train/reward_rejected": "responses the reward screen refused unparsed (math: an answer over a task.screen_max_* "
                             "bound), scored 0; text and reason in the reward_flagged table",
    "train/reward_timeouts": "responses whose grading exceeded task.reward_timeout_s, scored 0; in the reward_flagged "
                             "table",
    "train/reward_deadline_cut": "responses not graded before task.reward_batch_deadline_s passed, scored 0; in the "
                                 "reward_flagged table",
    "train/reward_cache_hit": "fraction of responses served by the reward cache or an earlier duplicate in the step",
    "train/reward_worker_restarts": "reward worker processes replaced this step (over budget, or died)",
    "loss/total": "the optimized loss, mean over mini-batches",
    "loss/pg": "policy-gradient part of the loss",
    "loss/reg": "regularizer part of the loss (entropy bonus, Lp-Reg, KL-Cov term)",
    "optim/grad_norm": "gradient norm before clipping, mean over mini-batches",
    "optim/lr": "learning rate",
    "optim/skipped": "optimizer steps skipped for a non-finite gradient norm in this rollout step",
    "eval/<source>/greedy": "held-out accuracy with greedy decoding",
    "eval/<source>/avg@k": "held-out accuracy averaged over k samples at eval temperature",
    "eval/<source>/pass@k": "unbiased pass@k over the same samples",
    "eval/<source>/distinct@k": "distinct correct solutions found per problem among the k samples (tasks whose "
                                "problems have several solutions, e.g. countdown)",
    "eval/<source>/coverage@k": "share of each problem's whole solution set found among the k samples, mean over "
                                "problems",
    "eval/<source>/acc": "the source's primary score (greedy, or avg@k for sampled sources such as AIME)",
    "eval/mean": "mean of eval/<source>/acc over sources",
    "timing/<phase>": "seconds spent in a trainer phase this step",
    "perf/tokens_per_s": "generated plus trained tokens per second of step time",
    "perf/peak_memory_gb": "peak GPU memory allocated by torch so far in the run, GiB (CUDA only)",
    "sparks/<name>/prob": "mean sampled probability of the configured token set <name> (NaN when none sampled)",
    "policy/sampled_prob_hist": "histogram of π_old(y) of sampled response tokens on metrics.hist_bins bins of [0, 1]",
    "policy/sampled_prob_loghist/<sign>": "histogram of π_old(y) of sampled response tokens on log-spaced bins from "
                                          "1e-6 to 1 (four a decade), for tokens of negative, zero or positive advantage",
    "spark/prob": "mean π_old(spark) at the decision point (response position 0) over the rollout's responses",
    "spark/usage": "share of the rollout's responses that open with the spark",
    "spark/acc_spark": "accuracy of the rollout's responses that open with the spark (NaN when none does)",
    "spark/acc_direct": "accuracy of the rollout's responses that do not open with the spark",
    "spark/neg_adv_frac": "share of the spark responses whose advantage is negative",
    "spark/reg_share": "share of the tokens the regularizer acts on (Lp-Reg: regularized) that are the spark",
    "control/active": "decision points where the spark floor is active (π_θ(spark) below the floor), per mini-batch",
    "acted_tokens": "table of a sample of the tokens the regularizer acts on each step (token, π_θ, π_old, π_proxy, "
                    "advantage sign, correct)",
    "samples": "table of metrics.samples_n sample completions (prompt, response, answer, reward, π_old(y) min/mean)",
}

# The dashboard (W&B workspace and report: lpreg/dashboard.py; HTML twin: analysis/dashboard_html.py), section by
# section in display order. Every METRICS name appears in exactly one section (tests/test_dashboard.py checks), so
# a renamed or new metric cannot leave a dead panel or go unseen.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Entropy collapse": ("policy/entropy", "policy/lowprob_frac", "policy/lowprob_mass", "policy/lowprob_count",
                         "policy/tail_mass", "policy/sampled_prob_mean"),
    "Accuracy": ("eval/mean", "eval/<source>/acc", "eval/<source>/greedy", "eval/<source>/avg@k",
                 "eval/<source>/pass@k", "eval/<source>/distinct@k", "eval/<source>/coverage@k", "train/reward_mean",
                 "train/accuracy"),
    "Lp-Reg internals": ("lpreg/delta", "lpreg/candidates", "lpreg/regularized", "lpreg/reg_ratio", "lpreg/div_mean",
                         "lpreg/proxy_ratio_mean", "lpreg/noise_frac"),
    "Optimization": ("loss/total", "loss/pg", "loss/reg", "policy/approx_kl", "policy/clipfrac", "optim/grad_norm",
                     "optim/lr", "optim/skipped", "train/zero_adv_frac", "train/response_len_mean",
                     "train/response_clip_frac", "kl_cov/selected", "highent/kept", "rollout/logprob_diff_mean",
                     "rollout/logprob_diff_max", "rollout/logprob_diff_frac"),
    "Sparks": ("spark/prob", "spark/usage", "spark/acc_spark", "spark/acc_direct", "spark/neg_adv_frac",
               "spark/reg_share", "control/active"),
    "Samples": ("samples", "acted_tokens", "policy/sampled_prob_hist", "policy/sampled_prob_loghist/<sign>",
                "sparks/<name>/prob"),
    "Speed": ("timing/<phase>", "perf/tokens_per_s", "perf/peak_memory_gb", "train/reward_rejected",
              "train/reward_timeouts", "train/reward_deadline_cut", "train/reward_worker_restarts",
              "train/reward_cache_hit"),
}

# Per-step series are drawn as a rolling mean over this many logged points (figures: trailing window; W&B: its
# running average); evaluations (eval/*, logged every eval.every steps) are drawn as they are. Chosen with the
# figures (commit 6cf40d5) so that 4-arm curves over a few hundred steps stay readable.
SMOOTHING_POINTS = 10

TIMING_PREFIXES = ("timing/", "perf/")  # wall-clock dependent; kept out of the deterministic metrics file
# Depend on the grading process's history and load (the cache survives across steps but not a resume; a timeout or
# a deadline cut depends on the machine's load), so they go with the timings, out of the deterministic metrics file.
# train/reward_rejected depends on the responses alone and stays in metrics.jsonl.
RUNTIME_METRICS = frozenset({"train/reward_cache_hit", "train/reward_worker_restarts", "train/reward_timeouts",
                             "train/reward_deadline_cut"})


def is_runtime(name: str) -> bool:
    """Whether a metric depends on wall clock or process history (``timing.jsonl``, not ``metrics.jsonl``)."""
    return name.startswith(TIMING_PREFIXES) or name in RUNTIME_METRICS


def is_template(name: str) -> bool:
    """A METRICS name with a placeholder (``<source>``, ``<phase>``, ``<name>``, or ``@k``) stands for many keys."""
    return "<" in name or name.endswith("@k")


def metric_regex(name: str) -> str:
    """The regular expression of the logged keys a METRICS name stands for (anchored).

    ``<...>`` matches one path segment (``[^/]+``) and a trailing ``@k`` matches ``@`` and an integer;
    everything else is literal. ``metric_regex("eval/<source>/pass@k") == "^eval/[^/]+/pass@[0-9]+$"``.
    """
    if name not in METRICS:
        raise KeyError(f"{name!r} is not a metric name in lpreg/core/metrics.py METRICS; add it there with a definition")
    body = name[:-2] if name.endswith("@k") else name
    parts = re.split(r"(<[a-z_]+>)", body)
    rx = "".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts)
    return "^" + rx + ("@[0-9]+" if name.endswith("@k") else "") + "$"


def keys_of(name: str, logged: Iterable[str]) -> list[str]:
    """The logged keys (sorted) that the METRICS name ``name`` stands for."""
    rx = re.compile(metric_regex(name))
    return sorted(k for k in set(logged) if rx.match(k))


def smoothing_points(name: str) -> int:
    """Rolling-mean window (logged points) for drawing the series ``name``: 1 for evaluations, else SMOOTHING_POINTS."""
    return 1 if name.startswith("eval/") else SMOOTHING_POINTS


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) − Σ softmax(z)·z over the last axis: ``[..., V] -> [...]`` (keeps the graph)."""
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def lowprob_mass(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Σ_v π(v)·1[π(v) < threshold], π = softmax(logits): ``[..., V] -> [...]``. Its mean over positions is the
    expectation of 1[π(y) < threshold] for y ~ π, which ``policy/lowprob_frac`` estimates from one sample per position."""
    probs = torch.softmax(logits, -1)  # [..., V]
    return (probs * (probs < threshold)).sum(-1)


def masked_mean_value(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return (x * mask).sum().item() / n.item() if n > 0 else math.nan


def policy_metrics(old: dict[str, torch.Tensor], p: torch.Tensor, mask: torch.Tensor, response_ids: torch.Tensor,
                   lowprob_threshold: float, sparks: dict[str, torch.Tensor]) -> dict[str, float]:
    """``policy/*`` and ``sparks/*`` of a rollout: ``old`` holds π_old's flat per-token ``entropy``, ``tail_mass``
    and (optionally) ``lowprob_mass`` over all response tokens; ``p`` is π_old(y) ``[B, R]``, ``mask`` the response
    mask, ``response_ids`` the tokens."""
    out = {
        "policy/entropy": old["entropy"].mean().item() if old["entropy"].numel() else math.nan,
        "policy/tail_mass": old["tail_mass"].mean().item() if old["tail_mass"].numel() else math.nan,
        "policy/sampled_prob_mean": masked_mean_value(p, mask),
        "policy/lowprob_frac": masked_mean_value((p < lowprob_threshold).float(), mask),
        "policy/lowprob_count": float(((p < lowprob_threshold) & (mask > 0)).sum()),
    }
    if "lowprob_mass" in old:
        out["policy/lowprob_mass"] = old["lowprob_mass"].mean().item() if old["lowprob_mass"].numel() else math.nan
    for name, ids in sparks.items():
        out[f"sparks/{name}/prob"] = masked_mean_value(p, torch.isin(response_ids, ids).float() * mask)
    return out


def logprob_gap(trainer_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor) -> dict[str, float]:
    """``rollout/logprob_diff_*`` from flat ``[N]`` log-probs of the same sampled tokens: the engine's and π_old's."""
    if not trainer_log_prob.numel():
        return {}
    gap = (rollout_log_prob.to(trainer_log_prob.dtype) - trainer_log_prob).abs()
    return {"rollout/logprob_diff_mean": gap.mean().item(), "rollout/logprob_diff_max": gap.max().item(),
            "rollout/logprob_diff_frac": (gap > 0.1).float().mean().item()}


def probability_histogram(probs: torch.Tensor, mask: torch.Tensor, bins: int) -> list[int]:
    """Counts of sampled-token probabilities over ``bins`` equal bins on [0, 1]."""
    p = probs[mask > 0].float().clamp(0, 1)
    return torch.histc(p, bins=bins, min=0.0, max=1.0).long().tolist()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


LOG_HIST_EDGES = [10.0 ** (e / 4) for e in range(-24, 1)]  # 1e-6 ... 1, four bins a decade
ADV_SIGNS = {"neg": -1, "zero": 0, "pos": 1}  # the split of policy/sampled_prob_loghist/<sign>


def log_probability_histograms(probs: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor) -> dict[str, list[int]]:
    """Counts of sampled-token probabilities on the log-spaced ``LOG_HIST_EDGES`` (values below 1e-6 counted in the
    first bin), one histogram per advantage sign: ``{"neg"|"zero"|"pos": counts}``."""
    edges = torch.tensor(LOG_HIST_EDGES, dtype=torch.float64)
    out = {}
    for name, sign in ADV_SIGNS.items():
        p = probs[(mask > 0) & (torch.sign(adv) == sign)].double().clamp(LOG_HIST_EDGES[0], 1.0)
        idx = (torch.bucketize(p, edges, right=True) - 1).clamp(0, len(edges) - 2)  # bin i holds [e_i, e_{i+1})
        out[name] = torch.bincount(idx, minlength=len(edges) - 1).tolist()
    return out


def decision_metrics(spark_prob: torch.Tensor, used: torch.Tensor, correct: torch.Tensor,
                     adv: torch.Tensor) -> dict[str, float]:
    """``spark/*`` of a rollout, per response ``[B]``: π_old(spark) at the decision point, whether the response
    opened with the spark, whether it was correct, its advantage."""
    used, correct = used.bool(), correct.bool()
    share = lambda x, m: float((x & m).sum()) / float(m.sum()) if m.any() else math.nan  # noqa: E731
    return {"spark/prob": spark_prob.mean().item() if spark_prob.numel() else math.nan,
            "spark/usage": used.float().mean().item() if used.numel() else math.nan,
            "spark/acc_spark": share(correct, used), "spark/acc_direct": share(correct, ~used),
            "spark/neg_adv_frac": share(adv < 0, used)}
