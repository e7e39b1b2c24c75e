"""The embedded study's report: the setup, the measured dynamics, the paired tables and one paragraph per paper claim,
every number computed from the study's runs (nothing typed by hand).

    python -m lpreg.run -m experiment=embedded_study                  # lpreg/conf/experiment/embedded_study.yaml
    python analysis/plots.py <its multirun folder> --report docs/embedded_study.md

``analysis/plots.py`` writes the figures and tables next to the report (``docs/embedded_study/``) and calls
:func:`write_report`. The verdicts compare measured values with the study's design targets (``COLLAPSE``,
``DETECT``) and with the paper's claims (its §4-5); each paragraph gives the numbers it rests on.

Per-run quantities (:func:`run_features`), all from ``metrics.jsonl`` and ``summary.json``:
- entropy at the start and the end: mean of ``policy/entropy`` over the first and the last ``WINDOW`` training steps;
  "lost" = 1 − end / start; the peak is the largest mean over ``WINDOW`` consecutive steps (full windows only, so
  it is no single step's value); ``ent_q3`` is the mean over the ``WINDOW`` steps that end at 3/4 of training, so
  ``ent_end − ent_q3`` is the change over the last quarter (how flat the curve has become);
- held-out accuracy: ``eval/mean`` averaged over the last ``objective.last_n`` evaluations (``last_mean``), and the
  step-0 evaluation;
- low-probability mass: ``policy/lowprob_mass`` averaged over the last quarter of training;
- pass@k at the largest k evaluated (``last_mean``);
- ``policy/clipfrac`` averaged over training (how often the PPO ratio was clipped at all).
Comparisons between arms are paired by seed (``analysis/stats.py``: t-interval for 3-9 seeds, bootstrap from 10, no
CI below 3); a seed that ran twice (two folders) counts once, with the mean of its runs.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from pathlib import Path

import pandas as pd
import yaml
from scipy import stats

from analysis.load import Runs
from analysis.stats import MIN_CI_N, POWER, ci_caption, ci_method, excludes_zero, mean_ci
from analysis.stats import detectable as min_detectable
from lpreg.mdtable import md_table
from lpreg.runfolder import arm

WINDOW = 10  # training steps averaged for the start and end entropy
COLLAPSE = 0.70  # design target: GRPO ("none") should lose at least this fraction of its initial entropy
DETECT = 0.05  # design target: a 5-point accuracy difference between two arms should be detectable with the seeds run
LARGE = "entropy_large"  # the arm of the entropy bonus at a large coefficient (lpreg/conf/arm/entropy_large.yaml)
PAPER_ENTROPY = "entropy"  # the entropy bonus at the paper's coefficient
PAPER_BEST_BASELINE = "highent_8020"  # the paper's strongest baseline (80/20, on-policy, Qwen3-14B: 57.51)


def run_features(runs: Runs) -> pd.DataFrame:
    """One row per completed run: ``arm, seed, ent_start, ent_end, ent_peak, lost, acc, acc0, lowmass, passk, k``."""
    rows = []
    by_run = dict(tuple(runs.metrics.groupby("run")))
    empty = runs.metrics.iloc[:0]
    for run, s in runs.summaries.items():
        r = by_run.get(run, empty)
        ent = r[r.metric == "policy/entropy"].sort_values("step").value
        low = r[r.metric == "policy/lowprob_mass"].sort_values("step")
        low = low[low.step > low.step.max() * 0.75].value if not low.empty else low.value
        last = s.get("last_mean", {})
        ks = [int(k.rpartition("@")[2]) for k in last if "/pass@" in k]
        kmax = max(ks, default=0)
        passk = [v for k, v in last.items() if k.endswith(f"/pass@{kmax}")] if kmax else []
        rows.append({
            "arm": arm(s), "seed": int(s["seed"]),
            "ent_start": ent.iloc[:WINDOW].mean() if len(ent) else math.nan,
            "ent_end": ent.iloc[-WINDOW:].mean() if len(ent) else math.nan,
            "ent_peak": ent.rolling(min(WINDOW, len(ent)) or 1).mean().max() if len(ent) else math.nan,
            "ent_q3": ent.iloc[max(0, q3 - WINDOW):q3].mean() if (q3 := (3 * len(ent)) // 4) else math.nan,
            "acc": last.get("eval/mean", math.nan), "acc0": s.get("initial", {}).get("eval/mean", math.nan),
            "lowmass": low.mean() if len(low) else math.nan,
            "passk": sum(passk) / len(passk) if passk else math.nan, "k": kmax,
            "clipfrac": r[r.metric == "policy/clipfrac"].value.mean(),
        })
    df = pd.DataFrame(rows)
    if not df.empty:
        df["lost"] = 1 - df.ent_end / df.ent_start
    return df


def ci(values) -> dict:
    """``mean_ci`` of ``values`` with ``excludes_zero``."""
    c = mean_ci(list(values))
    return {**c, "excludes_zero": excludes_zero(c["low"], c["high"])}


def per_seed(df: pd.DataFrame, a: str, col: str) -> pd.Series:
    """Arm ``a``'s ``col`` by seed (the mean where one seed ran more than once)."""
    return df[df.arm == a].groupby("seed")[col].mean()


def paired_diffs(df: pd.DataFrame, col: str, a: str, b: str) -> list[float]:
    """(arm a − arm b) of ``col`` for each seed both ran, in seed order."""
    x, y = per_seed(df, a, col), per_seed(df, b, col)
    return [x[s] - y[s] for s in sorted(set(x.index) & set(y.index))]


def paired(df: pd.DataFrame, col: str, a: str, b: str) -> dict:
    """``mean_ci`` of (arm a − arm b) of ``col`` over the seeds both ran, with ``excludes_zero``."""
    return ci(paired_diffs(df, col, a, b))


def fmt(c: dict, scale: float = 1.0, digits: int = 3) -> str:
    """``mean [low, high]`` (or ``mean (n=2, no CI)``) of a ``mean_ci`` result. An interval that excludes zero is
    printed with up to 3 more digits where a bound would otherwise round to zero."""
    if math.isnan(c["mean"]):
        return "n/a"
    if excludes_zero(c["low"], c["high"]):
        near = min(abs(c["low"]), abs(c["high"])) * scale
        while digits < 6 and round(near, digits) == 0:
            digits += 1
    m = f"{scale * c['mean']:.{digits}f}"
    if math.isnan(c["low"]):
        return f"{m} (n={c['n']}, no CI)"
    return f"{m} [{scale * c['low']:.{digits}f}, {scale * c['high']:.{digits}f}]"


def diff_text(c: dict, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    if math.isnan(c["mean"]):
        return "not measured (the arms share no seed)"
    side = "excludes zero" if c.get("excludes_zero") else ("includes zero" if not math.isnan(c["low"]) else "")
    return f"{fmt(c, scale, digits)}{unit}" + (f" ({side})" if side else "")


def detectable(df: pd.DataFrame, base: str = "none", power: float | None = None) -> dict[str, float]:
    """Per arm, from the per-seed accuracy differences (arm − ``base``; n pairs, SD s):

    - ``power=None``: the half-width of their 95% t-interval, t_{n−1, 0.975} · s / √n: the smallest observed
      difference whose CI excludes zero;
    - ``power=P``: the smallest true difference whose 95% CI excludes zero with probability P (a two-sided paired
      t-test's minimum detectable difference, normal-theory approximation: (t_{n−1, 0.975} + t_{n−1, P}) · s / √n).
      At P = 0.8 and 5 seeds it is 1.35 times the half-width.

    Empty below 3 paired seeds (no interval from fewer, analysis/stats.py). Uses t quantiles at every n, as the
    report's t-intervals do."""
    out = {}
    for a in sorted(set(df.arm) - {base}):
        d = paired_diffs(df, "acc", a, base)
        if len(d) >= MIN_CI_N:
            sd = statistics.stdev(d)
            out[a] = (min_detectable(sd, len(d), power=power) if power
                      else stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d)))
    return out


def noise_text(df: pd.DataFrame, base: str = "none") -> str:
    """The report's sentence on between-seed noise against the study's 5-point design target."""
    halves = detectable(df, base)
    sd = df[df.arm == base].acc
    head = (f"Between-seed SD of the compared accuracy: {100 * statistics.stdev(sd):.1f} points for `{base}` "
            f"({len(sd)} seeds; every arm's SD is in the table). " if len(sd) >= 2 else "")
    if not halves:
        return head + f"No paired interval is computed below {MIN_CI_N} paired seeds."
    mdd = detectable(df, base, POWER)
    listed = lambda d: ", ".join(f"`{a}` {100 * h:.1f}" for a, h in sorted(d.items(), key=lambda x: x[1]))
    ok = sorted(a for a, h in mdd.items() if h <= DETECT)
    return (head + f"Half-widths of the paired 95% CIs against `{base}` (the smallest observed difference that "
            f"excludes zero): {listed(halves)} points (median {100 * statistics.median(halves.values()):.1f}). "
            f"Smallest true difference detected with {100 * POWER:.0f}% power (paired t-test): {listed(mdd)} "
            f"points. A {100 * DETECT:.0f}-point difference is detectable with {100 * POWER:.0f}% power for "
            f"{len(ok)} of {len(mdd)} arms" + (f" ({', '.join(f'`{a}`' for a in ok)})" if ok else "")
            + " (the study's design target).")


def verdict(ok: bool | None) -> str:
    return "**Reproduced.**" if ok else ("**Not reproduced.**" if ok is not None else "**Not measured.**")


def direction(c: dict, sign: int = 1) -> str:
    """The verdict on a paired difference that the paper says has sign ``sign``: reproduced when its CI excludes
    zero on that side, contradicted when it excludes zero on the other, inconclusive when it includes zero."""
    if math.isnan(c["low"]):
        return "**Not measured** (fewer than 3 paired seeds)."
    if c["excludes_zero"]:
        return "**Reproduced.**" if sign * c["mean"] > 0 else "**Contradicted.**"
    return "**Inconclusive** (the CI includes zero)."


def setup(folder: Path) -> dict:
    """The resolved config of the study's first job (all jobs share it but for arm and seed)."""
    for cfg in sorted(folder.glob("*/.hydra/config.yaml")):
        return yaml.safe_load(cfg.read_text())
    return {}


def wall_time_s(folder: Path) -> float:
    """From the first job's start (its ``.hydra/`` written) to the last job's end (its ``summary.json`` written)."""
    starts = [p.stat().st_mtime for p in folder.glob("*/.hydra/overrides.yaml")]
    ends = [p.stat().st_mtime for p in folder.glob("*/summary.json")]
    return max(ends) - min(starts) if starts and ends else math.nan


def launcher(folder: Path) -> str:
    """How the multirun ran its jobs, from its ``multirun.yaml``: e.g. ``joblib, 2 at a time``."""
    path = folder / "multirun.yaml"
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}) if path.exists() else {}
    choice = hydra.get("runtime", {}).get("choices", {}).get("hydra/launcher", "?")
    n_jobs = hydra.get("launcher", {}).get("n_jobs")
    return f"`hydra/launcher={choice}`" + (f", {n_jobs} at a time" if n_jobs else "")


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()}")


def arm_table(df: pd.DataFrame, order: list[str]) -> str:
    header = ["arm", "seeds", "entropy start", "entropy end", "entropy lost", "peak entropy",
              "accuracy (last_mean, %)", "SD over seeds (points)", "Δ accuracy vs none (points)"]
    body = []
    for a in order:
        g = df[df.arm == a]
        sd = statistics.stdev(g.acc) * 100 if len(g) >= 2 else math.nan
        d = paired(df, "acc", a, "none") if a != "none" else None
        body.append([a, str(len(g)), fmt(ci(g.ent_start)), fmt(ci(g.ent_end)), fmt(ci(g.lost), 100, 1) + " %",
                     fmt(ci(g.ent_peak)), fmt(ci(g.acc), 100, 1), f"{sd:.1f}",
                     "-" if d is None else diff_text(d, 100, 1) + (" *" if d["excludes_zero"] else "")])
    return md_table(header, body)


def claims(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(title, paragraph) per paper claim, with the measured numbers and a verdict."""
    arms = set(df.arm)
    g = lambda a: df[df.arm == a]
    out = []
    if "none" in arms:
        lost = ci(g("none").lost)
        out.append(("GRPO's entropy collapses (paper Fig. 5: GRPO on-policy decays to about 0.02-0.05)",
                    f"{verdict(lost['mean'] >= COLLAPSE)} `none` loses {fmt(lost, 100, 1)} % of its initial entropy "
                    f"(from {fmt(ci(g('none').ent_start))} to {fmt(ci(g('none').ent_end))} nats; per seed "
                    f"{', '.join(f'{100 * v:.0f} %' for v in g('none').lost)}); the testbed's threshold is "
                    f"{100 * COLLAPSE:.0f} %."))
    if LARGE in arms and "none" in arms:
        big = g(LARGE)
        rising = ci(big.ent_end / big.ent_start)
        dacc = paired(df, "acc", LARGE, "none")
        unstable = rising["mean"] > 1.5 or (dacc["excludes_zero"] and dacc["mean"] < 0)
        out.append(("A large entropy bonus is unstable (paper: GRPO + entropy loss 50.40 vs GRPO 57.43 on Qwen3-14B)",
                    f"{verdict(unstable)} With a large coefficient the end/start entropy ratio is {fmt(rising, 1, 2)} "
                    f"(peak {fmt(ci(big.ent_peak))} nats) and its accuracy differs from `none` by "
                    f"{diff_text(dacc, 100, 1, ' points')}. Counted as instability: entropy ending above 1.5x its "
                    "start, or an accuracy loss whose CI excludes zero."))
    if PAPER_ENTROPY in arms and "none" in arms:
        dent = paired(df, "ent_end", PAPER_ENTROPY, "none")
        dacc = paired(df, "acc", PAPER_ENTROPY, "none")
        out.append((f"The entropy bonus at the paper's coefficient (arm `{PAPER_ENTROPY}`)",
                    f"Against `none`: end entropy {diff_text(dent, 1, 3, ' nats')}, accuracy "
                    f"{diff_text(dacc, 100, 1, ' points')}. At this scale the bonus is "
                    f"{'distinguishable' if dent['excludes_zero'] else 'not distinguishable'} from GRPO in entropy."))
    if "clip_higher" in arms and "none" in arms:
        ch = g("clip_higher")
        dent = paired(df, "ent_end", "clip_higher", "none")
        rises = ci(ch.ent_end - ch.ent_start)
        out.append(("Clip-Higher's entropy rises without bound (paper Fig. 5: above 0.6 by step 100, off-policy)",
                    f"{verdict(bool(rises['excludes_zero'] and rises['mean'] > 0))} Clip-Higher's entropy changes by "
                    f"{fmt(rises)} nats from start to end (peak {fmt(ci(ch.ent_peak))}); against `none` at the end: "
                    f"{diff_text(dent, 1, 3, ' nats')}. Fraction of tokens whose ratio was clipped, mean over training: "
                    f"{fmt(ci(ch.clipfrac), 1, 4)} (`none`: {fmt(ci(g('none').clipfrac), 1, 4)}); Clip-Higher can "
                    "only differ from GRPO on those tokens."))
    if "lpreg" in arms and "none" in arms:
        lp = g("lpreg")
        dent = paired(df, "ent_end", "lpreg", "none")
        bounded = bool((lp.ent_peak < 1.5 * lp.ent_start).all())  # every seed
        above = bool(dent["excludes_zero"] and dent["mean"] > 0)
        collapsed = ci(g("none").lost)["mean"] >= COLLAPSE
        if above and bounded and not collapsed:
            head = (f"**Partly reproduced.** `none`'s entropy does not collapse here (it loses "
                    f"{fmt(ci(g('none').lost), 100, 1)} %, under the {100 * COLLAPSE:.0f} % threshold), so Lp-Reg is "
                    "tested against a mild fall only.")
        else:
            head = verdict(above and bounded)
        out.append(("Lp-Reg keeps entropy from collapsing, stably (paper Fig. 5: dips, then stabilizes at 0.2-0.25)",
                    f"{head} Lp-Reg loses {fmt(ci(lp.lost), 100, 1)} % of its entropy (end "
                    f"{fmt(ci(lp.ent_end))} nats, peak {fmt(ci(lp.ent_peak))}); its end entropy minus `none`'s: "
                    f"{diff_text(dent, 1, 3, ' nats')}. Change over the last quarter of training: Lp-Reg "
                    f"{fmt(ci(lp.ent_end - lp.ent_q3))} nats, `none` {fmt(ci(g('none').ent_end - g('none').ent_q3))}. "
                    f"Counted as reproduced: `none` collapses, Lp-Reg ends above it with a CI excluding zero, and no "
                    f"seed's {WINDOW}-step mean rises above 1.5x its start."))
        dlow = paired(df, "lowmass", "lpreg", "none")
        out.append(("Lp-Reg preserves low-probability tokens (paper §4, Fig. 1: the 'reasoning sparks')",
                    f"{direction(dlow)} Probability mass of tokens below "
                    f"the low-probability threshold over the last quarter of training, Lp-Reg minus `none`: "
                    f"{diff_text(dlow, 1, 4)}."))
        kmax = int(df.k.max()) if len(df) else 0
        dpass = paired(df, "passk", "lpreg", "none")
        out.append((f"Lp-Reg explores more: pass@{kmax}",
                    f"{direction(dpass)} pass@{kmax} (last_mean), Lp-Reg "
                    f"minus `none`: {diff_text(dpass, 100, 1, ' points')}."))
        baselines = df[df.arm != "lpreg"].groupby("arm").acc.mean()
        best = baselines.idxmax() if len(baselines) else None
        compared = [("none", "GRPO"), (PAPER_BEST_BASELINE, "the paper's strongest baseline, 80/20")]
        if best not in (None, "none", PAPER_BEST_BASELINE):
            compared.append((best, f"the most accurate baseline of this study, `{best}`"))
        for base, what in compared:
            if base in arms:
                d = paired(df, "acc", "lpreg", base)
                out.append((f"Lp-Reg is more accurate than {what} (paper: 60.17 vs 57.43 GRPO, 57.51 80/20)",
                            f"{direction(d)} Held-out accuracy (last_mean), "
                            f"Lp-Reg minus `{base}`: {diff_text(d, 100, 1, ' points')}."))
    return out


def write_report(runs: Runs, folders: list[Path], out: Path, doc: Path, command: str) -> Path:
    """Write the study report ``doc`` (Markdown) linking the figures and tables in ``out``."""
    df = run_features(runs)
    if df.empty:
        raise ValueError("no completed runs: nothing to report")
    order = [a for a in ["none", "entropy", LARGE, "clip_higher", "highent_8020", "lpreg"] if a in set(df.arm)]
    order += sorted(set(df.arm) - set(order))
    cfg = setup(folders[0])
    tr, ev, task = cfg.get("trainer", {}), cfg.get("eval", {}), cfg.get("task", {})
    wall = sum(wall_time_s(f) for f in folders)
    rel = os.path.relpath(out, doc.parent)
    lines = [
        "# The embedded study",
        "",
        f"*Generated by `{command}` from {len(df)} completed runs; do not edit by hand: rerun the command.*",
        "",
        "## Command, machine, time",
        "",
        "```bash\npython -m lpreg.run -m experiment=embedded_study\n"
        f"python analysis/plots.py <multirun folder> --report {doc}\n```",
        "",
        f"- Machine: {machine()}.",
        f"- Wall time of the study: {wall / 60:.1f} min (first job's start to last job's end; "
        f"{len(df)} runs, {launcher(folders[0])}).",
        f"- Runs skipped (not completed): {len(runs.skipped)}" + (": " + "; ".join(runs.skipped) if runs.skipped else ""),
        f"- Setup: task `{task.get('name')}` ({task.get('digits', '?')}-digit, {task.get('n_test', '?')} held-out "
        f"problems), {tr.get('steps')} steps of {tr.get('prompts_per_step')} prompts x "
        f"{cfg.get('rollout', {}).get('group_size')} responses, {tr.get('mini_batches')} mini-batches per step, "
        f"lr {tr.get('lr')} with {tr.get('lr_warmup_steps')} warm-up steps; evaluation every {ev.get('every')} steps "
        f"(greedy, and {ev.get('samples')} samples at T = {ev.get('temperature')} for pass@k); compared on the mean "
        f"of the last {cfg.get('objective', {}).get('last_n')} evaluations (`last_mean`).",
        "",
        "## Arms",
        "",
        "Entropy is the token-mean policy entropy of the rollouts (nats); start and end are means over the first and "
        f"last {WINDOW} steps, the peak the largest mean over {WINDOW} consecutive steps; brackets: 95% CIs over "
        f"seeds. {ci_caption({ci_method(int(df[df.arm == a].acc.notna().sum())) for a in order})} Δ accuracy is paired by "
        "seed; * marks a CI that excludes zero.",
        "",
        arm_table(df, order),
        "",
        noise_text(df),
        "",
        "## Figures",
        "",
    ]
    figures = [("arm_panels", "One panel per arm"), ("policy_entropy", "Policy entropy"),
               ("eval_mean", "Held-out accuracy"), ("policy_lowprob_mass", "Low-probability mass"),
               ("policy_lowprob_frac", "Low-probability tokens"),
               ("pass_at_k", "pass@k"), ("prob_distribution", "Sampled-token probabilities")]
    for stem, title in figures:
        if (out / f"{stem}.png").exists():
            lines += [f"![{title}]({rel}/{stem}.png)", ""]
    lines += ["## Paired tables", ""]
    for proto in ("last_mean", "best"):
        p = out / f"paired_{proto}.md"
        if p.exists():
            lines += [p.read_text().strip(), ""]
    lines += ["## The paper's claims, measured", ""]
    for title, text in claims(df):
        lines += [f"**{title}.** {text}", ""]
    if task.get("name") == "arithmetic":
        lines += ["**First-token entropy.** Not measured: in the addition task every problem has one answer and one "
                  "digit order, so there is no branching point whose entropy would mean exploration.", ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    return doc
