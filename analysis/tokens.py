"""Token-level analyses, for every task: which tokens each regularizer acts on, the sampled-probability distribution on
a log scale split by advantage sign, and the entropy-accuracy frontier.

- :func:`acted_tokens`: the rows of each run's ``acted_tokens`` tables (``samples.jsonl``: a per-step sample of the
  tokens the regularizer acts on, ``lpreg/native/tokenlog.py``), and :func:`acted_summary`: per arm, the most often
  acted-on tokens, the share of acted-on tokens that come from correct responses and from negative-advantage ones.
- :func:`plot_log_histograms`: the ``policy/sampled_prob_loghist/<sign>`` histograms (1e-6 to 1, four bins a
  decade) of an early and a late window of training, one panel per arm, negative against positive advantage.
- :func:`frontier`: per arm, the held-out accuracy R against the policy entropy H at each evaluation after step 0,
  fitted as R = -a·exp(H) + b (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
  Language Models"), by least squares on exp(H) (``scipy.stats.linregress``): a, b and R².
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from lpreg.runfolder import arm


def acted_tokens(runs) -> pd.DataFrame:
    """Every acted-on token row of every run: columns ``arm, seed, step, token, p, p_old, p_proxy, adv_sign,
    correct, position``."""
    rows = []
    for run, s in runs.summaries.items():
        path = Path(run) / "samples.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("name") == "acted_tokens":
                rows += [{"arm": arm(s), "seed": int(s["seed"]), "step": rec["step"], **r} for r in rec["rows"]]
    return pd.DataFrame(rows, columns=["arm", "seed", "step", "token", "p", "p_old", "p_proxy", "adv_sign", "correct",
                                       "position", "mini_batch"])


def acted_summary(rows: pd.DataFrame, top: int = 8) -> pd.DataFrame:
    """Per arm: rows recorded, the ``top`` most often acted-on tokens with their shares, the share from correct
    responses and the share with negative advantage, the median π_θ(y) of acted-on tokens."""
    out = []
    for a, g in rows.groupby("arm"):
        counts = Counter(g.token)
        out.append({"arm": a, "rows": len(g), "top_tokens": [(t, n / len(g)) for t, n in counts.most_common(top)],
                    "correct_share": float(g.correct.mean()), "negative_share": float((g.adv_sign < 0).mean()),
                    "median_p": float(g.p.median())})
    return pd.DataFrame(out)


def acted_markdown(summary: pd.DataFrame) -> str:
    from lpreg.mdtable import md_table

    show = lambda t: repr(t)[1:-1] if t.strip() else repr(t)  # noqa: E731 - a space or an end token stays visible
    body = [[r.arm, str(r.rows), ", ".join(f"`{show(t)}` {100 * s:.0f}%" for t, s in r.top_tokens),
             f"{100 * r.correct_share:.1f}%", f"{100 * r.negative_share:.1f}%", f"{r.median_p:.3g}"]
            for _, r in summary.iterrows()]
    return ("Tokens each regularizer acts on (a sample of at most metrics.acted_tokens_n per step, all runs and seeds "
            "of the arm): the most frequent ones with their share of the rows, the share from responses graded "
            "correct, the share with negative advantage, the median π_θ(y).\n\n"
            + md_table(["arm", "rows", "most often acted on", "from correct responses", "negative advantage",
                        "median π_θ(y)"], body))


def plot_log_histograms(hists: pd.DataFrame, window: float = 0.1):
    """One panel per arm: the share of sampled tokens per log-spaced probability bin, early (the first ``window`` of
    the steps) and late (the last), negative against positive advantage."""
    import matplotlib.pyplot as plt

    from analysis.figures import label, legend_order

    hists = hists[hists.name.str.startswith("policy/sampled_prob_loghist/")]
    regs = legend_order(hists.regularizer.unique())
    fig, axes = plt.subplots(1, len(regs), figsize=(3.4 * len(regs), 3.4), sharey=True, squeeze=False,
                             constrained_layout=True)
    last = hists.step.max()
    for ax, reg in zip(axes[0], regs):
        g = hists[hists.regularizer == reg]
        for (lo, hi), style in (((0, window * last), ":"), (((1 - window) * last, last), "-")):
            part = g[(g.step > lo) & (g.step <= hi)]
            for sign, c in (("neg", "#d62728"), ("pos", "#2ca02c")):
                h = part[part.name == f"policy/sampled_prob_loghist/{sign}"]
                if h.empty:
                    continue
                counts = np.sum(np.stack(h.counts.to_numpy()), 0).astype(float)
                edges = np.asarray(h.edges.iloc[0])
                share = counts / max(counts.sum(), 1)
                when = "early" if lo == 0 else "late"
                ax.stairs(share, edges, color=c, ls=style, label=f"{sign} adv., {when}")
        ax.set_xscale("log")
        ax.set_title(label(reg), fontsize=9)
        ax.set_xlabel("sampled-token probability π_old(y)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of sampled tokens")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"Sampled-token probabilities on a log scale, first and last {int(100 * window)}% of the steps",
                 fontsize=10)
    return fig


def frontier_points(runs) -> pd.DataFrame:
    """Per run and evaluation after step 0: ``arm, seed, step, entropy, accuracy`` (the entropy of that step)."""
    m = runs.metrics
    acc = m[(m.metric == "eval/mean") & (m.step > 0)][["run", "regularizer", "seed", "step", "value"]]
    ent = m[m.metric == "policy/entropy"][["run", "step", "value"]].rename(columns={"value": "entropy"})
    pts = acc.rename(columns={"value": "accuracy", "regularizer": "arm"}).merge(ent, on=["run", "step"])
    return pts[["arm", "seed", "step", "entropy", "accuracy"]]


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """Per arm, the fit R = -a·exp(H) + b over its points: ``arm, a, b, r2, points`` (NaN below 3 points or when the
    entropy does not vary)."""
    from scipy import stats

    out = []
    for a, g in points.groupby("arm"):
        x = np.exp(g.entropy.to_numpy())
        if len(g) < 3 or np.ptp(x) == 0:
            out.append({"arm": a, "a": np.nan, "b": np.nan, "r2": np.nan, "points": len(g)})
            continue
        fit = stats.linregress(x, g.accuracy.to_numpy())
        out.append({"arm": a, "a": -fit.slope, "b": fit.intercept, "r2": fit.rvalue**2, "points": len(g)})
    return pd.DataFrame(out)


def frontier_markdown(fits: pd.DataFrame) -> str:
    from lpreg.mdtable import md_table

    body = [[r.arm, f"{r.a:.4g}", f"{r.b:.4g}", f"{r.r2:.3f}", str(r.points)] for _, r in fits.iterrows()]
    return ("Entropy-accuracy frontier: held-out accuracy R against policy entropy H at every evaluation after step "
            "0, fitted as R = -a·exp(H) + b (Cui et al. 2025).\n\n" + md_table(["arm", "a", "b", "R²", "points"], body))


def plot_frontier(points: pd.DataFrame, fits: pd.DataFrame):
    import matplotlib.pyplot as plt

    from analysis.figures import color, label, legend_order

    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for a in legend_order(points.arm.unique()):
        g, f = points[points.arm == a], fits[fits.arm == a].iloc[0]
        ax.scatter(g.entropy, g.accuracy, s=10, color=color(a), alpha=0.6, label=f"{label(a)}")
        if np.isfinite(f.a):
            h = np.linspace(g.entropy.min(), g.entropy.max(), 50)
            ax.plot(h, -f.a * np.exp(h) + f.b, color=color(a), lw=1.2)
    ax.set_xlabel("policy entropy H (nats)")
    ax.set_ylabel("held-out accuracy R")
    ax.set_title("Entropy-accuracy frontier, fit R = -a·exp(H) + b", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig


def write_token_analyses(runs, hists: pd.DataFrame | None, out: Path) -> list[Path]:
    """``acted_tokens.md``, ``log_prob_histograms.{png,pdf}``, ``frontier.{md,png,pdf}``: whatever the runs hold."""
    from analysis.figures import save

    written = []
    out.mkdir(parents=True, exist_ok=True)
    rows = acted_tokens(runs)
    if not rows.empty:
        (out / "acted_tokens.md").write_text(acted_markdown(acted_summary(rows)))
        written.append(out / "acted_tokens.md")
    if hists is not None and not hists.empty and hists.name.str.startswith("policy/sampled_prob_loghist/").any():
        written += save(plot_log_histograms(hists), out, "log_prob_histograms")
    points = frontier_points(runs)
    if not points.empty:
        fits = frontier(points)
        (out / "frontier.md").write_text(frontier_markdown(fits))
        written += [out / "frontier.md", *save(plot_frontier(points, fits), out, "frontier")]
    return written
