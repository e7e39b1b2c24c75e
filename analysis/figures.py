"""Figures: one line per regularizer (mean over seeds, 95% CI band where 3 or more seeds ran, ``analysis/stats.py``)
against training step, the
sampled-probability distribution over training (the paper's Fig. 1 style), and Optuna sweep plots.

Labels and colors come from the regularizer registry (``lpreg/core/losses``), so an arm has the same name and color in every
figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lpreg.core.metrics import smoothing_points

# metric -> (title, y label, smoothing window in logged points); the figure set of the CLI. Per-step metrics are
# shown as a trailing rolling mean over lpreg.core.metrics.SMOOTHING_POINTS points (said in the title); evaluations are
# plotted as they are.
_CURVES = {
    "policy/entropy": ("Policy entropy", "entropy (nats, token mean)"),
    "eval/mean": ("Held-out accuracy", "accuracy (mean over sources)"),
    "policy/lowprob_frac": ("Low-probability sampled tokens", "fraction of tokens with π_old(y) < 0.1"),
    "policy/lowprob_mass": ("Probability mass below the low-probability threshold",
                            "π_old mass below metrics.lowprob_threshold"),
    "policy/tail_mass": ("Mass removed by the min-p filter", "1 − Z (token mean)"),
    "train/response_len_mean": ("Response length", "tokens"),
    "lpreg/delta": ("Lp-Reg selection threshold δ", "largest π_θ(y) among selected tokens"),
    "lpreg/reg_ratio": ("Lp-Reg regularization ratio", "regularized / candidates"),
    "spark/prob": ("Spark probability at the decision point", "mean π_old(spark) at response position 0"),
    "spark/usage": ("Rollouts that use the spark", "share of responses opening with the spark"),
    "spark/acc_spark": ("Accuracy of spark-mode rollouts", "accuracy"),
    "spark/acc_direct": ("Accuracy of direct-mode rollouts", "accuracy"),
    "spark/reg_share": ("Share of acted-on tokens that are the spark", "share"),
    "eval/spark_forced/acc": ("Held-out accuracy with the spark forced", "accuracy (diagnostic)"),
}
CURVES = {m: (title, ylabel, smoothing_points(m)) for m, (title, ylabel) in _CURVES.items()}


def _entries():
    from lpreg.core.losses import REGULARIZERS

    return {r.name: r for r in REGULARIZERS.entries()}


def label(reg: str) -> str:
    """The regularizer's display label from its registry entry (the option name for unknown arms)."""
    entry = _entries().get(reg)
    return entry.label if entry else reg


def color(reg: str) -> str:
    """The regularizer's color from its registry entry; unknown arms get a gray."""
    entry = _entries().get(reg)
    return entry.color if entry else "#bcbd22"


def legend_order(regs) -> list[str]:
    """Regularizers in registry order (unknown names last, alphabetically)."""
    order = list(_entries())
    return sorted(regs, key=lambda r: (order.index(r) if r in order else len(order), r))


def file_stem(metric: str) -> str:
    return metric.replace("/", "_").replace("@", "at")


def plot_curve(stats: pd.DataFrame, metric: str, title: str | None = None, ylabel: str | None = None):
    """Mean line and CI band per regularizer from ``curve_stats`` output (no band where fewer than 3 seeds ran: the
    legend says so)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for reg in legend_order(stats.regularizer.unique()):
        g = stats[stats.regularizer == reg].sort_values("step")
        n = int(g.n.max())
        note = "" if g.low.notna().any() else ", no CI"
        ax.plot(g.step, g["mean"], color=color(reg), lw=1.6, label=f"{label(reg)} (n={n}{note})")
        ax.fill_between(g.step, g.low, g.high, color=color(reg), alpha=0.2, lw=0)  # NaN bounds: no band
    ax.set_title(title or metric)
    ax.set_xlabel("training step (rollout batches)")
    ax.set_ylabel(ylabel or metric)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="best")
    return fig


def plot_arm_panels(stats: dict[str, pd.DataFrame], titles: dict[str, str], baseline: str = "none"):
    """Small multiples: one row per metric (``stats``: metric -> ``curve_stats`` output), one column per arm; each
    panel shows the arm's mean and 95% CI band, with ``baseline``'s mean dashed for reference. Each panel has its own
    y range (an arm whose entropy explodes would otherwise flatten every other panel of its row)."""
    regs = legend_order(set().union(*(set(s.regularizer) for s in stats.values())))
    regs = [baseline] * (baseline in regs) + [r for r in regs if r != baseline]
    fig, axes = plt.subplots(len(stats), len(regs), figsize=(2.4 * len(regs), 2.1 * len(stats)), sharex=True,
                             squeeze=False, constrained_layout=True)
    for row, (metric, st) in enumerate(stats.items()):
        base = st[st.regularizer == baseline].sort_values("step")
        for col, reg in enumerate(regs):
            ax = axes[row][col]
            g = st[st.regularizer == reg].sort_values("step")
            if reg != baseline and not base.empty:
                ax.plot(base.step, base["mean"], color="black", lw=0.9, ls="--", alpha=0.6)
            ax.plot(g.step, g["mean"], color=color(reg), lw=1.4)
            ax.fill_between(g.step, g.low, g.high, color=color(reg), alpha=0.25, lw=0)
            ax.grid(alpha=0.3)
            if row == 0:
                n = int(g.n.max()) if not g.empty else 0
                ax.set_title(f"{label(reg)} (n={n})", fontsize=9)
            if col == 0:
                ax.set_ylabel(titles[metric], fontsize=8)
            if row == len(stats) - 1:
                ax.set_xlabel("step", fontsize=8)
    fig.suptitle(f"One panel per arm: mean over seeds, 95% CI band; dashed: {baseline}", fontsize=10)
    return fig


def plot_pass_at_k(table: pd.DataFrame, protocol: str):
    """pass@k against k (log2 axis) per arm from ``stats.pass_at_k_table``: mean over seeds with its 95% CI."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for reg in legend_order(table.regularizer.unique()):
        g = table[table.regularizer == reg].sort_values("k")
        note = "" if g.low.notna().any() else ", no CI"
        ax.errorbar(g.k, g["mean"], yerr=[g["mean"] - g.low, g.high - g["mean"]], color=color(reg), marker="o",
                    lw=1.4, capsize=3, label=f"{label(reg)} (n={int(g.n.max())}{note})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table.k.unique()), [str(k) for k in sorted(table.k.unique())])
    ax.set_title(f"pass@k on the held-out set ({protocol} evaluation)")
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (mean over sources)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="best")
    return fig


def plot_prob_distribution(hists: pd.DataFrame, steps: list[int] | None = None, n_steps: int = 5):
    """Ridge plot of the sampled-token probability distribution at chosen steps, one panel per regularizer."""
    regs = legend_order(hists.regularizer.unique())
    all_steps = sorted(hists.step.unique())
    if steps is None:
        steps = sorted({all_steps[int(i)] for i in np.linspace(0, len(all_steps) - 1, min(n_steps, len(all_steps)))})
    fig, axes = plt.subplots(1, len(regs), figsize=(3.2 * len(regs), 3.6), sharey=True, squeeze=False,
                             constrained_layout=True)
    for ax, reg in zip(axes[0], regs):
        for i, step in enumerate(steps):
            g = hists[(hists.regularizer == reg) & (hists.step == step)]
            if g.empty:
                continue
            counts = np.sum(np.stack(g.counts.to_numpy()), 0).astype(float)
            edges = np.asarray(g.edges.iloc[0])
            dens = np.log1p(counts)  # log scale: the spike near 1 would otherwise hide the low-probability tail
            centers = (edges[:-1] + edges[1:]) / 2
            scale = 0.9 / max(dens.max(), 1e-12)
            ax.fill_between(centers, i, i + dens * scale, color=color(reg), alpha=0.55, lw=0)
            ax.plot(centers, i + dens * scale, color=color(reg), lw=0.8)
        ax.set_yticks(range(len(steps)), [str(s) for s in steps])
        ax.set_title(label(reg))
        ax.set_xlabel("sampled-token probability π_old(y)")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("training step")
    fig.suptitle("Sampled-token probabilities over training (height ∝ log(1 + count))", fontsize=10)
    return fig


def save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:  # no creation date in the PDF: regenerating a figure from the same runs gives the same file
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def plot_sweep(storage: str, study_name: str, out: Path) -> list[Path]:
    """Optuna optimization history, parameter importance and slice plots of a study."""
    import optuna
    from optuna.visualization import matplotlib as ov

    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    paths = []
    plots = [("sweep_history", ov.plot_optimization_history), ("sweep_slice", ov.plot_slice)]
    if len(done) >= 2 and len(study.best_trial.params) >= 1:
        plots.append(("sweep_importance", ov.plot_param_importances))
    for stem, fn in plots:
        ax = fn(study)
        fig = (ax if isinstance(ax, np.ndarray) else np.asarray([ax])).flat[0].get_figure()
        fig.set_size_inches(max(6.4, fig.get_size_inches()[0]), 4.0)
        fig.tight_layout()
        paths += save(fig, out, stem)
    return paths
