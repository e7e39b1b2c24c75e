"""Statistics over seeds: means with 95% confidence intervals, paired differences and their tests, multiplicity
adjustment, and robust aggregates; each from the library made for it (scipy, statsmodels, rliable).

Which interval (``mean_ci``), chosen by the number of seeds n:
- n < 3: no interval (``method = "n<3"``, bounds NaN). Two seeds give a t-interval 12.7 standard errors wide: it says
  nothing, so none is printed.
- n >= 3: Student's t-interval, mean ± t_{n-1, 0.975} · s / √n (``scipy.stats.t``). Simulated on skewed and bimodal
  per-seed accuracies at n = 10-20 it covers the true mean at least 92% of the time (``tests/test_stats.py``: 92.6-94.7%
  over its cases). Bootstrap intervals were measured beside it and are too narrow at these n (a resample is never
  more spread than the sample): scipy's BCa bootstrap covered 86.5-95.8% on skewed and bimodal cases at n = 10-20
  (600 simulated studies each), and the percentile bootstrap this module used before covered 89-91% at n = 10-13.

Paired comparisons (``paired_table``, ``paired_test``): an arm against a baseline on the seeds both ran (seed i of the
arm with seed i of the baseline: the same warm-up, the same prompts order); the CI is that of the mean of the per-seed
differences by the same rule, the p-value the paired t-test's (``scipy.stats.ttest_rel``), and ``holm`` adjusts a
family of p-values (``statsmodels.stats.multitest.multipletests``). ``detectable`` is the difference a paired t-test
detects with 80% power at the observed spread. Robust aggregates over seeds, with rliable's definitions computed on
scipy (rliable 1.2 needs arch < 8, whose 7.x releases fail to import beside pandas 3): the interquartile mean with a
BCa bootstrap CI, and the probability of improvement of one arm over another.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from lpreg.runfolder import arm

MIN_CI_N = 3  # fewer seeds than this: no confidence interval is reported
BASELINE = "none"  # the arm every other arm is compared with in the exploratory tables
LEVEL = 0.95
POWER = 0.80
BOOT_REPS = 2000  # bootstrap resamples of the IQM's interval


def ci_method(n: int) -> str:
    """The interval used for ``n`` finite values: ``"n<3"`` (none) or ``"t"``."""
    return f"n<{MIN_CI_N}" if n < MIN_CI_N else "t"


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[~np.isnan(x)]


def mean_ci(values, level: float = LEVEL) -> dict:
    """``{mean, low, high, n, method}`` of the finite ``values``; the interval by the module's rule on n."""
    x = _finite(values)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if ci_method(n) != "t":
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n, "method": ci_method(n)}
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "method": "t"}


def paired_test(a, b) -> dict:
    """Paired comparison of ``a`` and ``b`` (aligned by seed): ``{diff, low, high, n, method, p, sd}``; p is the
    two-sided paired t-test's (NaN below 3 pairs)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    c = mean_ci(d)
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) >= MIN_CI_N and sd > 0 else (
        math.nan if len(d) < MIN_CI_N else (0.0 if abs(c["mean"]) > 0 else 1.0))
    return {"diff": c["mean"], "low": c["low"], "high": c["high"], "n": c["n"], "method": c["method"], "p": p,
            "sd": sd}


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN entries left out of the family and kept NaN)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def detectable(sd: float, n: int, alpha: float = 1 - LEVEL, power: float = POWER) -> float:
    """The smallest true difference a two-sided paired t-test at ``alpha`` detects with ``power`` from ``n`` pairs
    with per-pair spread ``sd``: (t_{1-α/2, n-1} + t_{power, n-1}) · sd / √n."""
    if n < MIN_CI_N or not math.isfinite(sd):
        return math.nan
    return (float(stats.t.ppf(1 - alpha / 2, n - 1)) + float(stats.t.ppf(power, n - 1))) * sd / math.sqrt(n)


def iqm_ci(scores: dict[str, np.ndarray], level: float = LEVEL, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """arm -> (IQM, low, high): the interquartile mean of each arm's per-seed scores (the mean of the middle half,
    ``scipy.stats.trim_mean`` at 25%, rliable's definition) with a BCa bootstrap CI over seeds (``scipy.stats.bootstrap``;
    with one task, rliable's stratified bootstrap is this bootstrap). Arms with fewer than 3 seeds are left out."""
    out = {}
    for a, values in scores.items():
        x = _finite(values)
        if len(x) < MIN_CI_N:
            continue
        iqm = float(stats.trim_mean(x, 0.25))
        if np.ptp(x) == 0:
            out[a] = (iqm, iqm, iqm)
            continue
        res = stats.bootstrap((x,), lambda v, axis: stats.trim_mean(v, 0.25, axis=axis), n_resamples=BOOT_REPS,
                              confidence_level=level, method="BCa", random_state=np.random.default_rng(seed))
        out[a] = (iqm, float(res.confidence_interval.low), float(res.confidence_interval.high))
    return out


def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y)/2 over the arms' per-seed scores: the Mann-Whitney U statistic over n·m
    (``scipy.stats.mannwhitneyu``; rliable's probability of improvement for one task)."""
    x, y = _finite(x), _finite(y)
    if not len(x) or not len(y):
        return math.nan
    return float(stats.mannwhitneyu(x, y).statistic) / (len(x) * len(y))


def excludes_zero(low: float, high: float) -> bool:
    """Whether the interval [low, high] lies wholly above or wholly below 0 (False when there is no interval)."""
    return bool(low > 0 or high < 0)


def ci_caption(methods) -> str:
    """The caption sentence that says which intervals a table or figure shows."""
    methods = set(methods)
    parts = []
    if "t" in methods:
        parts.append(f"Student t-interval over seeds ({MIN_CI_N} or more)")
    text = "95% CI: " + "; ".join(parts) + "." if parts else ""
    if f"n<{MIN_CI_N}" in methods:
        text += f" No CI where fewer than {MIN_CI_N} seeds ran (marked \"no CI\")."
    return text.strip()


def curve_stats(df: pd.DataFrame, metric: str, smooth: int = 1) -> pd.DataFrame:
    """Per regularizer and step: mean over seeds and its 95% CI by ``mean_ci`` (columns mean, low, high, n,
    method; low and high NaN where fewer than 3 seeds logged the step).

    ``smooth > 1`` first replaces each run's series by its trailing rolling mean over ``smooth`` logged points.
    """
    sub = df[df.metric == metric].sort_values("step")
    if smooth > 1:
        sub = sub.assign(value=sub.groupby("run").value.transform(lambda v: v.rolling(smooth, min_periods=1).mean()))
    out = []
    for (reg, step), g in sub.groupby(["regularizer", "step"]):
        c = mean_ci(g.value.to_numpy())
        out.append((reg, step, c["mean"], c["low"], c["high"], c["n"], c["method"]))
    return pd.DataFrame(out, columns=["regularizer", "step", "mean", "low", "high", "n", "method"])


def eval_values(summaries: dict[str, dict], protocol: str = "best") -> pd.DataFrame:
    """Held-out scores per run: columns ``regularizer, seed, source, value`` from each summary's ``protocol`` block
    (``eval/<src>/acc`` as source ``<src>``, ``eval/mean`` as source ``mean``)."""
    rows = []
    for s in summaries.values():
        for k, v in s.get(protocol, {}).items():
            if (k.endswith("/acc") or k == "eval/mean") and v is not None:
                rows.append((arm(s), int(s["seed"]), k.removeprefix("eval/").removesuffix("/acc"), v))
    return pd.DataFrame(rows, columns=["regularizer", "seed", "source", "value"])


def results_table(summaries: dict[str, dict], protocol: str = "best") -> pd.DataFrame:
    """Held-out accuracy per regularizer and data source (``eval/<src>/acc`` and ``eval/mean``): mean and 95% CI over
    seeds (``mean_ci``; no CI below 3 seeds), from each run's summary. ``protocol``: ``best`` (best evaluation during
    training, the paper's Table 1 protocol) or ``final`` (last evaluation)."""
    df = eval_values(summaries, protocol)
    out = []
    for (reg, src), g in df.groupby(["regularizer", "source"]):
        c = mean_ci(g.value.to_numpy())
        out.append({"regularizer": reg, "source": src, "mean": c["mean"], "ci_low": c["low"], "ci_high": c["high"],
                    "seeds": c["n"], "method": c["method"], "protocol": protocol})
    return pd.DataFrame(out)


def paired_table(summaries: dict[str, dict], protocol: str = "best", baseline: str = BASELINE) -> pd.DataFrame:
    """Each arm minus ``baseline``, paired by seed, per data source: mean difference, its 95% CI (``mean_ci`` of the
    per-seed differences), the number of pairs, the method, and whether the CI excludes zero. Seeds that only one of
    the two arms ran are left out. Empty when the baseline arm did not run."""
    df = eval_values(summaries, protocol)
    base = df[df.regularizer == baseline].groupby(["source", "seed"]).value.mean()
    out = []
    for (reg, src), g in df[df.regularizer != baseline].groupby(["regularizer", "source"]):
        per_seed = g.groupby("seed").value.mean()
        pairs = [(per_seed[s], base[(src, s)]) for s in per_seed.index if (src, s) in base.index]
        c = paired_test([a for a, _ in pairs], [b for _, b in pairs])
        out.append({"regularizer": reg, "baseline": baseline, "source": src, "diff": c["diff"], "ci_low": c["low"],
                    "ci_high": c["high"], "pairs": c["n"], "method": c["method"], "p": c["p"],
                    "excludes_zero": excludes_zero(c["low"], c["high"]), "protocol": protocol})
    return pd.DataFrame(out, columns=["regularizer", "baseline", "source", "diff", "ci_low", "ci_high", "pairs",
                                      "method", "p", "excludes_zero", "protocol"])


def pass_at_k_table(summaries: dict[str, dict], protocol: str = "last_mean") -> pd.DataFrame:
    """pass@k against k per arm: each run's ``eval/<src>/pass@k`` from its summary's ``protocol`` block, averaged over
    the sources that report it, then mean and 95% CI over seeds (``mean_ci``). Columns ``regularizer, k, mean, low,
    high, n, method``."""
    per_run: dict[tuple[str, int, int], list[float]] = {}
    for s in summaries.values():
        for key, v in s.get(protocol, {}).items():
            head, _, k = key.rpartition("/pass@")
            if head.startswith("eval/") and k.isdigit() and v is not None:
                per_run.setdefault((arm(s), int(s["seed"]), int(k)), []).append(v)
    df = pd.DataFrame([(a, seed, k, float(np.mean(v))) for (a, seed, k), v in per_run.items()],
                      columns=["regularizer", "seed", "k", "value"])
    out = []
    for (reg, k), g in df.groupby(["regularizer", "k"]):
        c = mean_ci(g.value.to_numpy())
        out.append((reg, k, c["mean"], c["low"], c["high"], c["n"], c["method"]))
    return pd.DataFrame(out, columns=["regularizer", "k", "mean", "low", "high", "n", "method"])


def cell_text(mean: float, low: float, high: float, n: int, scale: float = 100.0) -> str:
    """A table cell: ``mean ± half-width`` of the CI (times ``scale``), or ``mean (n=2, no CI)`` where there is none."""
    if math.isnan(mean):
        return "-"
    if math.isnan(low) or math.isnan(high):
        return f"{scale * mean:.2f} (n={n}, no CI)"
    return f"{scale * mean:.2f} ± {scale * (high - low) / 2:.2f}"
