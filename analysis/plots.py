"""Paper figures and a results table from lpreg runs.

    python analysis/plots.py <multirun or job folder> [more folders] [--out DIR]
    python analysis/plots.py --wandb ENTITY/PROJECT --group G --out DIR
    python analysis/plots.py <sweep folder>            # also writes the Optuna sweep plots
    python analysis/plots.py --storage sqlite:///path/study.db --study NAME --out DIR
    LPREG_SWEEP_STORAGE=postgresql://u:pw@host/db python analysis/plots.py <sweep folder>  # study.json masks pw
    python analysis/plots.py <multirun folder> --dashboard  # also dashboard.html (analysis/dashboard_html.py)
    python analysis/plots.py multirun/sweeps/protocol      # a comparison protocol (+sweep=protocol): analysis/protocol.py
    python analysis/plots.py <study folder> --report docs/embedded_study.md  # experiment=embedded_study's report

Writes, into ``--out`` (default ``<first folder>/figures``): one PNG+PDF per metric of ``figures.CURVES`` (mean over
seeds, 95% CI band where 3 or more seeds ran, one line per regularizer), ``prob_distribution.png/pdf``, the token-level
analyses (``analysis/tokens.py``: ``acted_tokens.md``, ``log_prob_histograms``, ``frontier.md`` and its figure),
``pass_at_k.png/pdf`` (pass@k against k, last_mean evaluations), ``arm_panels.png/pdf`` (entropy, accuracy and
low-probability mass, one panel per arm),
``results_<protocol>.{md,tex,csv}`` (mean and CI per arm; protocols best, final, last_mean) and
``paired_<protocol>.{md,tex,csv}`` (each arm minus
``none`` paired by seed, with CIs and a mark where they exclude zero; intervals as ``analysis/stats.py`` says), and
with ``--dashboard`` one self-contained ``dashboard.html`` (the sections of the W&B workspace, the results table, the
runs' configs and statuses). On a protocol folder (``protocol.json``) the curves and tables use its stage-C runs only
(fresh seeds, test split), and ``protocol.md``, ``protocol_table.csv`` and ``protocol_grid.{png,pdf}`` are added
(``analysis/protocol.py``). Missing or
partial runs are listed and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.figures import (
    CURVES,
    file_stem,
    plot_arm_panels,
    plot_curve,
    plot_pass_at_k,
    plot_prob_distribution,
    plot_sweep,
    save,
)
from analysis.load import load_histograms, load_runs, load_wandb
from analysis.protocol import read_protocol, test_folders, write_protocol
from analysis.stats import BASELINE, cell_text, ci_caption, curve_stats, paired_table, pass_at_k_table, results_table
from analysis.tokens import write_token_analyses
from lpreg.harness.pruning import STORAGE_ENV
from lpreg.mdtable import md_table, tex_cell
from lpreg.redact import unmask


def render(note: str, header: list[str], body: list[list[str]], fmt: str) -> str:
    """A table as Markdown (``md``) or LaTeX (``tex``) with ``note`` above it (LaTeX: as a comment)."""
    if fmt == "md":  # regularizer and source names come from run files: escaped (lpreg/mdtable.py)
        return note + "\n\n" + md_table(header, body)
    esc = lambda s: tex_cell(s).replace("±", r"$\pm$")
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(map(esc, header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(esc, row)) + r" \\" for row in body]
    return "% " + note + "\n" + "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


# arm_panels: one row per metric (each one of figures.CURVES), with its short row label
PANEL_METRICS = {"policy/entropy": "entropy (nats)", "eval/mean": "held-out accuracy",
                 "policy/lowprob_mass": "low-prob. mass"}
PASS_AT_K_PROTOCOL = "last_mean"  # pass@k averaged over the last evaluations: less noisy than the final one
PROTOCOLS = {"best": "best over evaluations, as the paper", "final": "last evaluation",
             "last_mean": "mean of the last objective.last_n evaluations"}


def _protocol_text(proto: str) -> str:
    return f"Held-out accuracy (%), {proto} evaluation during training ({PROTOCOLS[proto]})"


def table_text(table, fmt: str) -> str:
    """Markdown or LaTeX: one row per arm (a regularizer, or an ``arm=`` of one), one column per source, cells
    ``mean ± half-CI`` (``mean (n=2, no CI)`` where fewer than 3 seeds ran)."""
    sources = sorted(set(table.source) - {"mean"}) + ["mean"]
    regs = sorted(table.regularizer.unique())
    cell = {(r.regularizer, r.source): cell_text(r["mean"], r.ci_low, r.ci_high, r.seeds) for _, r in table.iterrows()}
    seeds = {r: int(table[table.regularizer == r].seeds.max()) for r in regs}
    note = f"{_protocol_text(table.protocol.iloc[0])}; mean ± half-width of the 95% CI over seeds. " + \
        ci_caption(table.method)
    header = ["arm", "seeds", *sources]
    body = [[r, str(seeds[r]), *[cell.get((r, s), "-") for s in sources]] for r in regs]
    return render(note, header, body, fmt)


def paired_text(table, fmt: str) -> str:
    """Markdown or LaTeX: each arm minus the baseline, paired by seed; cells ``diff ± half-CI`` with ``*`` where the
    CI excludes zero, ``diff (n=2, no CI)`` where fewer than 3 pairs ran."""
    sources = sorted(set(table.source) - {"mean"}) + ["mean"]
    regs = sorted(table.regularizer.unique())
    cell = {(r.regularizer, r.source): cell_text(r["diff"], r.ci_low, r.ci_high, r.pairs)
            + (" *" if r.excludes_zero else "") for _, r in table.iterrows()}
    pairs = {r: int(table[table.regularizer == r].pairs.max()) for r in regs}
    base = table.baseline.iloc[0]
    note = (f"{_protocol_text(table.protocol.iloc[0])}: difference to {base}, paired by seed (arm − {base}, "
            f"percentage points); mean difference ± half-width of its 95% CI. {ci_caption(table.method)} "
            "* marks a CI that excludes zero.")
    header = ["arm", "pairs", *sources]
    body = [[r, str(pairs[r]), *[cell.get((r, s), "-") for s in sources]] for r in regs]
    return render(note, header, body, fmt)


def write_tables(summaries: dict, out: Path) -> list[Path]:
    """``results_<protocol>`` and ``paired_<protocol>`` as csv, md and tex; returns the files written."""
    written = []
    for protocol in PROTOCOLS:
        for stem, table, text in (("results", results_table(summaries, protocol), table_text),
                                  ("paired", paired_table(summaries, protocol), paired_text)):
            if table.empty:
                print(f"{stem}_{protocol} skipped: " + ("no evaluations in any run" if stem == "results" else
                                                       f"no arm to compare with {BASELINE} on a shared seed"))
                continue
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / f"{stem}_{protocol}.csv", index=False)
            (out / f"{stem}_{protocol}.md").write_text(text(table, "md"))
            (out / f"{stem}_{protocol}.tex").write_text(text(table, "tex"))
            written += [out / f"{stem}_{protocol}.{e}" for e in ("csv", "md", "tex")]
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--wandb", metavar="ENTITY/PROJECT")
    ap.add_argument("--group")
    ap.add_argument("--steps", help="comma-separated steps for the probability-distribution figure")
    ap.add_argument("--storage", help="an Optuna storage URL: plot the study named by --study")
    ap.add_argument("--study")
    ap.add_argument("--dashboard", action="store_true", help="also write dashboard.html, the W&B-free dashboard")
    ap.add_argument("--report", type=Path, metavar="DOC.md",
                    help="also write the embedded study's report (analysis/study.py); figures go to DOC/ beside it")
    args = ap.parse_args(argv)
    if args.storage:
        if not args.study:
            ap.error("--storage needs --study NAME")
        for p in plot_sweep(args.storage, args.study, args.out or Path("figures")):
            print(f"wrote {p}")
        return 0
    if not args.folders and not args.wandb:
        ap.error("give run folders, --wandb ENTITY/PROJECT, or --storage URL --study NAME")
    protocols = {f: rec for f in args.folders if (rec := read_protocol(f)) is not None}
    # a protocol's curves and tables come from its stage-C runs only, never from its tuning runs
    folders = [p for f in args.folders for p in (test_folders(f, protocols[f]) if f in protocols else [f])]
    try:
        if protocols and not folders:
            raise FileNotFoundError(f"{', '.join(map(str, protocols))}: no stage-C runs yet (protocol.json)")
        runs = load_wandb(args.wandb, args.group) if args.wandb else load_runs(folders)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or (args.report.with_suffix("") if args.report else
                       args.folders[0] / "figures" if args.folders else Path("figures"))
    for s in runs.skipped:
        print(f"skipped {s}")
    written = []
    if runs.metrics.empty:
        print("error: no completed runs with metrics found", file=sys.stderr)
    else:
        curves = {}  # metric -> curve_stats, for the curve figures and the arm panels
        for metric, (title, ylabel, smooth) in CURVES.items():
            stats = curves[metric] = curve_stats(runs.metrics, metric, smooth)
            title = f"{title} ({smooth}-step rolling mean)" if smooth > 1 else title
            if stats.empty:
                print(f"no values for {metric}: figure skipped")
                continue
            written += save(plot_curve(stats, metric, title, ylabel), out, file_stem(metric))
        hists = load_histograms(runs, None) if not args.wandb else None
        linear = hists[hists.name == "policy/sampled_prob_hist"] if hists is not None else None
        if linear is not None and not linear.empty:
            steps = [int(s) for s in args.steps.split(",")] if args.steps else None
            written += save(plot_prob_distribution(linear, steps), out, "prob_distribution")
        written += write_token_analyses(runs, hists, out)
        panels = {m: curves[m] for m in PANEL_METRICS if not curves[m].empty}
        if panels:
            written += save(plot_arm_panels(panels, PANEL_METRICS), out, "arm_panels")
        if not (passk := pass_at_k_table(runs.summaries, PASS_AT_K_PROTOCOL)).empty:
            written += save(plot_pass_at_k(passk, PASS_AT_K_PROTOCOL), out, "pass_at_k")
        written += write_tables(runs.summaries, out)
    for folder in protocols:
        written += write_protocol(folder, out)
    for folder in args.folders:
        study = folder / "study.json"
        if study.exists():
            info = json.loads(study.read_text())
            try:
                written += plot_sweep(unmask(info["storage"], STORAGE_ENV), info["study_name"], out)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
    if args.dashboard:
        from analysis.dashboard_html import jobs_from_folders, jobs_from_runs, write_dashboard

        jobs = jobs_from_runs(runs) if args.wandb else jobs_from_folders(args.folders)
        source = f"{args.wandb}" + (f" group {args.group}" if args.group else "") if args.wandb else \
            ", ".join(str(f) for f in args.folders)
        written.append(write_dashboard(runs, jobs, out, f"lpreg dashboard: {source}", from_folders=not args.wandb))
    if args.report and not runs.metrics.empty:
        from analysis.study import write_report

        command = "python analysis/plots.py " + " ".join(map(str, args.folders)) + f" --report {args.report}"
        written.append(write_report(runs, args.folders, out, args.report, command))
    for p in written:
        print(f"wrote {p}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
