"""Statistics over seeds: means with 95% percentile-bootstrap confidence intervals, and the results table."""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def curve_stats(df: pd.DataFrame, metric: str, smooth: int = 1) -> pd.DataFrame:
    """Per regularizer and step: mean over seeds and its bootstrap CI (columns mean, low, high, n).

    ``smooth > 1`` first replaces each run's series by its trailing rolling mean over ``smooth`` logged points.
    """
    sub = df[df.metric == metric].sort_values("step")
    if smooth > 1:
        sub = sub.assign(value=sub.groupby("run").value.transform(lambda v: v.rolling(smooth, min_periods=1).mean()))
    out = []
    for (reg, step), g in sub.groupby(["regularizer", "step"]):
        m, lo, hi = bootstrap_ci(g.value.to_numpy())
        out.append((reg, step, m, lo, hi, len(g)))
    return pd.DataFrame(out, columns=["regularizer", "step", "mean", "low", "high", "n"])


def results_table(summaries: dict[str, dict], protocol: str = "best") -> pd.DataFrame:
    """Held-out accuracy per regularizer and data source (``eval/<src>/acc`` and ``eval/mean``): mean ± CI half-width
    over seeds, from each run's summary. ``protocol``: ``best`` (best evaluation during training, the paper's
    Table 1 protocol) or ``final`` (last evaluation)."""
    rows = []
    for s in summaries.values():
        for k, v in s.get(protocol, {}).items():
            if (k.endswith("/acc") or k == "eval/mean") and v is not None:
                rows.append((s["regularizer"], s["seed"], k.removeprefix("eval/").removesuffix("/acc"), v))
    df = pd.DataFrame(rows, columns=["regularizer", "seed", "source", "value"])
    out = []
    for (reg, src), g in df.groupby(["regularizer", "source"]):
        m, lo, hi = bootstrap_ci(g.value.to_numpy())
        out.append({"regularizer": reg, "source": src, "mean": m, "ci_low": lo, "ci_high": hi, "seeds": len(g),
                    "protocol": protocol})
    return pd.DataFrame(out)
