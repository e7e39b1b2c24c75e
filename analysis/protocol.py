"""The report of a comparison protocol (``+sweep=protocol``, ``lpreg/harness/protocol.py``): the pre-registration, what
each stage chose, the test result on fresh seeds, and the primary contrast's verdict.

``plots.py`` calls :func:`write_protocol` on every folder that holds ``protocol.json``; that folder's curves and usual
tables are drawn from its stage-C runs only (:func:`test_folders`). Written, into the figures folder:

- ``protocol_grid.{png,pdf}``: stage A, the validation objective of every (learning rate, arm) cell, the chosen cell
  of each arm marked, an extension of the grid shown as its own column;
- ``protocol.md`` (and ``protocol_table.csv``): the pre-registration as recorded before anything ran; per arm its
  stage-A learning rate, its stage-B winner and the score of its default point (trial 0), its validation objective
  against its test result (the gap is the winner's curse), the test mean with its 95% t-interval, the IQM with its BCa
  bootstrap interval, the probability of improvement over ``none``; every contrast of the primary arm against another
  arm (paired by seed) with its p-value and its Holm-adjusted p over that family, the primary one marked, the others
  exploratory; and the primary contrast's verdict in words: supported (adjusted p < α, effect > 0), contradicted
  (adjusted p < α, effect < 0) or inconclusive, with the difference detectable at 80% power.

The compared value is each run's objective (``summary.json``), the same value the stages selected on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import (
    BASELINE,
    POWER,
    cell_text,
    ci_caption,
    detectable,
    holm,
    iqm_ci,
    mean_ci,
    paired_test,
    probability_of_improvement,
)
from lpreg.harness.protocol import PROTOCOL_FILE


def read_protocol(folder: Path) -> dict | None:
    path = Path(folder) / PROTOCOL_FILE
    return json.loads(path.read_text()) if path.exists() else None


def test_folders(folder: Path, record: dict) -> list[Path]:
    """The stage-C job folders that exist (the only runs that enter the comparison)."""
    return [Path(folder) / d for e in record.get("arms", {}).values() for d in e.get("test_dirs", [])
            if (Path(folder) / d).exists()]


def test_scores(folder: Path, record: dict) -> dict[str, dict[int, float]]:
    """arm -> {seed: objective} of its completed stage-C runs."""
    out = {}
    for arm, entry in record.get("arms", {}).items():
        scores = {}
        for d in entry.get("test_dirs", []):
            p = Path(folder) / d / "summary.json"
            s = json.loads(p.read_text()) if p.exists() else {}
            if s.get("status") == "completed" and s.get("objective") is not None and math.isfinite(s["objective"]):
                scores[int(s["seed"])] = s["objective"]
        out[arm] = scores
    return out


def contrasts(record: dict, scores: dict[str, dict[int, float]]) -> pd.DataFrame:
    """The primary arm against every other arm, paired by seed: difference, CI, p, Holm-adjusted p, role."""
    pre = record["preregistration"]
    primary, alpha = pre["primary"]["arm"], pre["primary"]["alpha"]
    rows = []
    for arm in pre["arms"]:
        if arm == primary:
            continue
        seeds = sorted(set(scores.get(primary, {})) & set(scores.get(arm, {})))
        t = paired_test([scores[primary][s] for s in seeds], [scores[arm][s] for s in seeds])
        rows.append({"contrast": f"{primary} − {arm}", "other": arm, "role": "primary" if arm == record.get("baseline")
                     else "exploratory", **t, "mde": detectable(t["sd"], t["n"], alpha, POWER)})
    df = pd.DataFrame(rows)
    if not df.empty:
        df["p_holm"] = holm(df.p.tolist())
    return df


def verdict(row, alpha: float) -> str:
    """The primary contrast in words."""
    if row is None:
        return "**No verdict:** the primary contrast has no paired test runs."
    if math.isnan(row["p"]):
        return f"**No verdict:** {row['contrast']} has {row['n']} paired seeds; a test needs at least 3."
    pct = lambda v: f"{100 * v:+.2f} points"  # noqa: E731
    effect = f"{row['contrast']}: {pct(row['diff'])} [{100 * row['low']:.2f}, {100 * row['high']:.2f}] over {row['n']} " \
             f"paired seeds, p = {row['p']:.3g}, Holm-adjusted p = {row['p_holm']:.3g}"
    if row["p_holm"] < alpha:
        return f"**{'Supported' if row['diff'] > 0 else 'Contradicted'}.** {effect}."
    return (f"**Inconclusive.** {effect}; with this spread a paired difference of {100 * row['mde']:.2f} points would "
            f"be detected with {int(100 * POWER)}% power.")


def protocol_table(record: dict, scores: dict[str, dict[int, float]]) -> pd.DataFrame:
    """One row per arm: stage-A lr (and an extension), stage-B winner and default score, validation, test, IQM, PoI."""
    iqm = iqm_ci({a: list(v.values()) for a, v in scores.items()})
    base = scores.get(BASELINE, {})
    rows = []
    for arm, e in record.get("arms", {}).items():
        c = mean_ci(list(scores.get(arm, {}).values()))
        b = e.get("stage_b") or {}
        rows.append({"arm": arm, "lr": e["stage_a"]["lr"], "extended": e["stage_a"].get("extended"),
                     "winner": {k: v for k, v in e.get("winner", {}).items() if k != "trainer.lr"},
                     "default_value": b.get("default_value"), "validation": e.get("validation"),
                     "test_mean": c["mean"], "test_low": c["low"], "test_high": c["high"], "test_n": c["n"],
                     "gap": c["mean"] - e["validation"] if e.get("validation") is not None else math.nan,
                     "iqm": iqm.get(arm, (math.nan,) * 3)[0], "iqm_low": iqm.get(arm, (math.nan,) * 3)[1],
                     "iqm_high": iqm.get(arm, (math.nan,) * 3)[2],
                     "poi_vs_none": probability_of_improvement(list(scores.get(arm, {}).values()), list(base.values()))
                     if arm != BASELINE else math.nan})
    return pd.DataFrame(rows)


def plot_grid(record: dict):
    """Stage A as a heatmap: validation objective per (learning rate, arm), the chosen cell boxed."""
    import matplotlib.pyplot as plt

    arms = list(record["arms"])
    lrs = sorted({float(k) for e in record["arms"].values() for k in e["stage_a"]["cells"]})
    grid = np.full((len(arms), len(lrs)), np.nan)
    for i, arm in enumerate(arms):
        for k, v in record["arms"][arm]["stage_a"]["cells"].items():
            grid[i, lrs.index(float(k))] = v if v is not None else np.nan
    fig, ax = plt.subplots(figsize=(1.3 * len(lrs) + 2.5, 0.6 * len(arms) + 1.6), constrained_layout=True)
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, arm in enumerate(arms):
        for j in range(len(lrs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{100 * grid[i, j]:.1f}", ha="center", va="center", fontsize=8, color="w")
        j = lrs.index(record["arms"][arm]["stage_a"]["lr"])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    grid_values = set(record["preregistration"]["lr_grid"])
    ax.set_xticks(range(len(lrs)), [f"{lr:.2g}" + ("" if lr in grid_values else "\n(ext.)") for lr in lrs])
    ax.set_yticks(range(len(arms)), arms)
    ax.set_xlabel("learning rate (stage A grid)")
    ax.set_title("Stage A: validation objective × 100 (mean over the grid seeds); red: chosen", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _fmt(v, scale=100.0, digits=2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.{digits}f}"


def protocol_markdown(record: dict, table: pd.DataFrame, con: pd.DataFrame) -> str:
    from lpreg.mdtable import md_table

    pre = record["preregistration"]
    alpha = pre["primary"]["alpha"]
    lines = ["## Pre-registration (recorded before the first run)", "",
             f"- objective: `{pre['objective']['metric']}` ({pre['objective']['mode']}), horizon "
             f"{pre['horizon']['steps']} steps, task `{pre['task']}`",
             f"- arms: {', '.join(pre['arms'])}; stage A grid {pre['lr_grid']} on seeds {pre['grid_seeds']}"
             f"{' (extended once at an end)' if pre['extend_grid'] else ''}; stage B {pre['tune_trials']} trials per "
             f"arm ({pre['startup_trials']} random, default enqueued) on seeds {pre['tune_seeds']}; stage C seeds "
             f"{pre['test_seeds']}",
             f"- primary contrast: {pre['primary']['arm']} against {pre['primary']['against']} — here "
             f"**{record.get('baseline')}**; {pre['primary']['test']}, α = {alpha}",
             "- departures from the protocol's standard counts: " + ("; ".join(pre.get("departures", [])) or "none"),
             ""]
    body = []
    for _, r in table.iterrows():
        ext = f" (grid extended {r.extended['at']}: {r.extended['lr']:.2g})" if isinstance(r.extended, dict) else ""
        winner = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in r.winner.items()) or "-"
        body.append([r.arm, f"{r.lr:.2g}{ext}", winner, _fmt(r.default_value), _fmt(r.validation),
                     cell_text(r.test_mean, r.test_low, r.test_high, int(r.test_n)), _fmt(r.gap),
                     f"{_fmt(r.iqm)} [{_fmt(r.iqm_low)}, {_fmt(r.iqm_high)}]", _fmt(r.poi_vs_none, 1.0)])
    lines += ["## Result (values × 100; test = stage C, fresh seeds, test split)", "",
              md_table(["arm", "stage-A lr", "stage-B winner", "default (trial 0)", "validation", "test (95% CI)",
                        "test − validation", "IQM [95% CI]", f"P(improvement over {BASELINE})"], body), "",
              f"{ci_caption(['t'])} IQM: mean of the middle half of the seeds, BCa bootstrap interval. "
              "test − validation is the winner's curse (negative: the selection was lucky).", ""]
    if not con.empty:
        rows = [[r.contrast, r.role, f"{100 * r['diff']:+.2f}", f"[{_fmt(r.low)}, {_fmt(r.high)}]", str(r.n),
                 f"{r.p:.3g}", f"{r.p_holm:.3g}", _fmt(r.mde)] for _, r in con.iterrows()]
        lines += ["## Contrasts of the primary arm (paired by seed; Holm over the family)", "",
                  md_table(["contrast", "role", "difference", "95% CI", "pairs", "p", "Holm p", "80%-power MDE"], rows),
                  ""]
    primary = con[con.role == "primary"] if not con.empty else con
    lines += ["## Verdict on the primary contrast", "",
              verdict(primary.iloc[0] if len(primary) else None, alpha), ""]
    return "\n".join(lines)


def write_protocol(folder: Path, out: Path) -> list[Path]:
    """``protocol.md``, ``protocol_table.csv`` and ``protocol_grid.{png,pdf}`` for a protocol folder."""
    from analysis.figures import save

    record = read_protocol(folder)
    scores = test_scores(folder, record)
    table, con = protocol_table(record, scores), contrasts(record, scores)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(winner=table.winner.map(json.dumps), extended=table.extended.map(json.dumps)).to_csv(
        out / "protocol_table.csv", index=False)
    (out / "protocol.md").write_text(protocol_markdown(record, table, con))
    return [out / "protocol_table.csv", out / "protocol.md", *save(plot_grid(record), out, "protocol_grid")]
