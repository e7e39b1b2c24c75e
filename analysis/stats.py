"""Statistics over seeds: means with 95% confidence intervals, paired differences against a baseline arm, and the
results tables.

Which interval (``mean_ci``), chosen by the number of seeds n:
- n < 3: no interval (``method = "n<3"``, bounds NaN). Two seeds give a t-interval 12.7 standard errors wide and a
  bootstrap with three distinct resampled means: neither says anything, so none is printed.
- 3 <= n < ``BOOTSTRAP_MIN_N``: Student t-interval, mean ± t_{n-1, 0.975} · s / √n. The percentile bootstrap is too
  narrow at such n (it estimates the spread with divisor n, not n − 1, and has few distinct resamples).
- n >= ``BOOTSTRAP_MIN_N``: percentile bootstrap of the mean (2,000 resamples, fixed RNG seed), which does not assume
  normality.

Paired comparisons (``paired_table``): each arm against ``none`` on the seeds both ran (seed i of the arm with seed i
of the baseline: same prompts order, same initial evaluation); the CI is that of the mean of the per-seed differences,
by the same rule. A difference "excludes zero" when its whole CI is on one side of 0.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from lpreg.runfolder import arm

MIN_CI_N = 3  # fewer seeds than this: no confidence interval is reported
BOOTSTRAP_MIN_N = 10  # from this many seeds on, the percentile bootstrap replaces the t-interval
BASELINE = "none"  # the arm every other arm is compared with


@functools.lru_cache(maxsize=None)  # curve_stats asks for the same few quantiles at every step
def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF.

    CDF(x) = 1/2 + ∫_0^x f(t) dt with f(t) = Γ((df+1)/2) / (√(df π) Γ(df/2)) · (1 + t²/df)^(−(df+1)/2), the integral by
    Simpson's rule on 4,000 intervals; bisection to 1e-10. Matches the tabulated 0.975 quantiles of df 1, 2, 4 and 9
    to 2e-6 (tests/test_stats.py). Written out because scipy is not a dependency.
    """
    if not 0.5 < q < 1:
        raise ValueError(f"t_quantile needs 0.5 < q < 1, got {q}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        f = c * (1 + t**2 / df) ** (-(df + 1) / 2)
        h = x / 4000
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1000.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean. One value gives a zero-width interval."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    if len(x) == 1:
        return (float(x[0]),) * 3
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def ci_method(n: int) -> str:
    """The interval used for ``n`` finite values: ``"n<3"`` (none), ``"t"`` or ``"bootstrap"`` (module constants)."""
    return f"n<{MIN_CI_N}" if n < MIN_CI_N else ("t" if n < BOOTSTRAP_MIN_N else "bootstrap")


def mean_ci(values, level: float = 0.95) -> dict:
    """``{mean, low, high, n, method}`` of the finite ``values``; the interval by the module's rule on n
    (``method``: ``"n<3"`` with NaN bounds, ``"t"`` or ``"bootstrap"``)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    method = ci_method(n)
    if method == "t":
        half = t_quantile(1 - (1 - level) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "method": method}
    if method == "bootstrap":
        _, lo, hi = bootstrap_ci(x, level=level)
        return {"mean": mean, "low": lo, "high": hi, "n": n, "method": method}
    return {"mean": mean, "low": math.nan, "high": math.nan, "n": n, "method": method}


def excludes_zero(low: float, high: float) -> bool:
    """Whether the interval [low, high] lies wholly above or wholly below 0 (False when there is no interval)."""
    return bool(low > 0 or high < 0)


def ci_caption(methods) -> str:
    """The caption sentence that says which intervals a table or figure shows."""
    methods = set(methods)
    parts = []
    if "t" in methods:
        parts.append(f"Student t-interval ({MIN_CI_N} to {BOOTSTRAP_MIN_N - 1} seeds)")
    if "bootstrap" in methods:
        parts.append(f"percentile bootstrap, 2,000 resamples ({BOOTSTRAP_MIN_N} or more seeds)")
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
        c = mean_ci([a - b for a, b in pairs])
        out.append({"regularizer": reg, "baseline": baseline, "source": src, "diff": c["mean"], "ci_low": c["low"],
                    "ci_high": c["high"], "pairs": c["n"], "method": c["method"],
                    "excludes_zero": excludes_zero(c["low"], c["high"]), "protocol": protocol})
    return pd.DataFrame(out, columns=["regularizer", "baseline", "source", "diff", "ci_low", "ci_high", "pairs",
                                      "method", "excludes_zero", "protocol"])


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
