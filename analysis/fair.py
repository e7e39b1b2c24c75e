"""The report of a fair comparison (``+sweep=fair``, ``hydra_plugins/lpreg_sweeper/fair.py``): what each arm's tuning
chose, how its best trial did on fresh seeds, the paired comparison against ``none`` on those seeds, and each arm's
sensitivity to its main hyperparameter.

``plots.py`` calls :func:`write_fair` on every folder that holds ``fair.json``; the curves and the usual tables of
that folder are drawn from the fresh-seed runs only (:func:`eval_folders`).

The compared value is each run's sweep objective (``summary.json`` ``objective``, i.e. ``objective.metric`` by
``objective.mode``), the same value the studies maximized, so the tuning objective of the best trial (mean over the
tuning seeds) and its fresh-seed mean measure the same thing: their gap is the winner's curse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.stats import BASELINE, cell_text, ci_caption, excludes_zero, mean_ci

FAIR_FILE = "fair.json"


def read_fair(folder: Path) -> dict | None:
    """``fair.json`` of a fair-comparison sweep folder, or None for any other folder."""
    path = Path(folder) / FAIR_FILE
    return json.loads(path.read_text()) if path.exists() else None


def eval_folders(folder: Path, info: dict) -> list[Path]:
    """The fresh-seed job folders that exist (the only runs that enter the comparison)."""
    return [Path(folder) / d for arm in info["arms"].values() for d in arm.get("eval_dirs", [])
            if (Path(folder) / d).exists()]


def fresh_objectives(folder: Path, info: dict) -> dict[str, dict[int, float]]:
    """arm -> {seed: objective} of its completed fresh-seed runs."""
    out = {}
    for arm, entry in info["arms"].items():
        vals = {}
        for d in entry.get("eval_dirs", []):
            p = Path(folder) / d / "summary.json"
            s = json.loads(p.read_text()) if p.exists() else {}
            if s.get("status") == "completed" and s.get("objective") is not None and math.isfinite(s["objective"]):
                vals[int(s["seed"])] = s["objective"]
        out[arm] = vals
    return out


def fair_table(folder: Path, info: dict, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per arm: tuned parameters, the best trial's tuning objective, the fresh-seed mean and CI, their gap,
    and the fresh-seed difference to ``baseline`` paired by seed with its CI (``analysis/stats.py``)."""
    fresh = fresh_objectives(folder, info)
    base = fresh.get(baseline, {})
    rows = []
    for arm, entry in info["arms"].items():
        c = mean_ci(list(fresh[arm].values()))
        row = {"arm": arm, "params": entry.get("best_params", {}), "tuning_objective": entry.get("tuning_objective"),
               "fresh_mean": c["mean"], "fresh_low": c["low"], "fresh_high": c["high"], "fresh_n": c["n"],
               "fresh_method": c["method"]}
        row["gap"] = (c["mean"] - row["tuning_objective"]) if row["tuning_objective"] is not None else math.nan
        if arm != baseline:
            d = mean_ci([v - base[s] for s, v in fresh[arm].items() if s in base])
            row.update(diff=d["mean"], diff_low=d["low"], diff_high=d["high"], pairs=d["n"], diff_method=d["method"],
                       excludes_zero=excludes_zero(d["low"], d["high"]))
        rows.append(row)
    return pd.DataFrame(rows)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in params.items()) or "-"


def fair_markdown(table: pd.DataFrame, info: dict, baseline: str = BASELINE) -> str:
    """The fair-comparison table as Markdown with its caption (values in objective units × 100)."""
    from lpreg.mdtable import md_table

    header = ["arm", "tuned parameters", "tuning objective (best trial)", "fresh seeds", "fresh − tuning",
              f"fresh − {baseline} (paired)"]
    body = []
    for _, r in table.iterrows():
        tuning = "-" if r.tuning_objective is None or pd.isna(r.tuning_objective) else f"{100 * r.tuning_objective:.2f}"
        gap = "-" if pd.isna(r.gap) else f"{100 * r.gap:+.2f}"
        diff = "-" if r.arm == baseline or pd.isna(r.get("diff", math.nan)) else \
            cell_text(r["diff"], r.diff_low, r.diff_high, int(r.pairs)) + (" *" if r.excludes_zero else "")
        body.append([r.arm, _params_text(r.params), tuning,
                     cell_text(r.fresh_mean, r.fresh_low, r.fresh_high, int(r.fresh_n)), gap, diff])
    methods = list(table.fresh_method) + [m for m in table.get("diff_method", []) if isinstance(m, str)]
    note = (f"Fair comparison {info['name']}: {info['n_trials']} trials per arm on tuning seeds {info['seeds']}; each "
            f"arm's best trial re-run on fresh seeds {info['eval_seeds']}. Values: the sweep objective × 100. "
            f"'fresh − tuning' is the winner's curse (negative: the best trial was lucky). Paired differences by seed "
            f"against {baseline}; * marks a CI that excludes zero. {ci_caption(methods)}")
    return note + "\n\n" + md_table(header, body)


def trials_frame(storage: str, info: dict) -> pd.DataFrame:
    """Every completed tuning trial: columns ``arm, number, value, main, param_value``."""
    import optuna

    rows = []
    for arm, entry in info["arms"].items():
        study = optuna.load_study(study_name=entry["study"], storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            rows.append((arm, t.number, t.value, entry["main_param"], t.params.get(entry["main_param"])))
    return pd.DataFrame(rows, columns=["arm", "number", "value", "main", "param_value"])


def plot_sensitivity(trials: pd.DataFrame, info: dict):
    """One panel per arm: each tuning trial's objective against the arm's main hyperparameter (log axis when the
    search space is log-scaled); the best trial circled."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    from analysis.figures import color, label

    arms = list(info["arms"])
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.2), squeeze=False, constrained_layout=True)
    for ax, arm in zip(axes[0], arms):
        entry, g = info["arms"][arm], trials[trials.arm == arm]
        ax.scatter(g.param_value, g.value, color=color(arm), s=18)
        best = g[g.number == entry.get("best_trial")]
        ax.scatter(best.param_value, best.value, facecolors="none", edgecolors="k", s=80, label="best trial")
        if entry["space"].get(entry["main_param"], {}).get("log"):
            ax.set_xscale("log")
            # three labelled ticks across the search range: matplotlib labels every minor tick of a range narrower
            # than a decade (overlapping text) and none when no power of ten falls inside it
            space = entry["space"][entry["main_param"]]
            ticks = np.geomspace(space["low"], space["high"], 3)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
        ax.set_title(f"{label(arm)} ({len(g)} trials)", fontsize=9)
        ax.set_xlabel(entry["main_param"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("tuning objective\n(mean over tuning seeds)")
    return fig


def write_fair(folder: Path, out: Path, storage: str) -> list[Path]:
    """``fair_table.{md,csv}`` and ``fair_sensitivity.{png,pdf}`` for the fair-comparison folder ``folder``."""
    from analysis.figures import save

    info = read_fair(folder)
    table = fair_table(folder, info)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(params=table.params.map(json.dumps)).to_csv(out / "fair_table.csv", index=False)
    (out / "fair_table.md").write_text(fair_markdown(table, info))
    written = [out / "fair_table.csv", out / "fair_table.md"]
    trials = trials_frame(storage, info)
    if not trials.empty:
        written += save(plot_sensitivity(trials, info), out, "fair_sensitivity")
    return written
