"""The W&B-free twin of ``python -m lpreg.dashboard``: one self-contained HTML page of a set of runs.

    python analysis/plots.py <multirun folder(s)> --dashboard      # writes <figures folder>/dashboard.html

The page has the same sections as the W&B workspace (``SECTIONS`` in ``lpreg/core/metrics.py``, in order), each with how to
read it; one figure per metric (mean over seeds with the 95% CI band, none below 3 seeds, smoothed as the figures
are), one per logged key for templated names such as ``eval/<source>/pass@k``; the results table in *Accuracy*; the
latest sample completions and the sampled-probability ridge plot in *Samples*; and a last section with every run's
status, overrides and config. Figures are embedded as base64 PNG, so the file can be mailed or opened offline; the
page has no script, and a Content-Security-Policy forbids any. Every run name, config value and sample text is
HTML-escaped (a sample completion is model output, hence untrusted).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.figures import color, label, plot_curve, plot_prob_distribution
from analysis.load import Runs, job_folders, load_histograms
from analysis.stats import cell_text, ci_caption, curve_stats, results_table
from lpreg.core.metrics import METRICS, SECTIONS, is_template, keys_of, smoothing_points
from lpreg.dashboard import READING
from lpreg.runfolder import arm

DPI = 80  # embedded PNG resolution: 6.4 x 4.0 in figures -> 512 x 320 px, about 25 kB each
SAMPLE_ROWS = 4  # sample completions shown per run (the latest logged table)
SAMPLE_COLUMNS = ("prompt", "response", "answer", "reward", "prob_min", "prob_mean")  # trainer._sample_rows


@dataclass
class Job:
    """One run as the page lists it: name, arm, seed, status, wall time, error, overrides, config text, folder."""

    name: str
    regularizer: str
    seed: int | None
    status: str
    wall_time_s: float | None = None
    error: str | None = None
    overrides: tuple[str, ...] = ()
    config: str = ""
    folder: Path | None = None


def esc(value) -> str:
    """HTML-escape ``str(value)``, quotes included (safe in text and in attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def jobs_from_folders(paths) -> list[Job]:
    """Every job folder under ``paths`` (completed or not), named by its path relative to their common parent."""
    folders = job_folders(paths)
    roots = [Path(p).resolve() for p in paths]
    out = []
    for f in folders:
        s = json.loads((f / "summary.json").read_text())
        root = next((r for r in roots if f.resolve().is_relative_to(r)), f.parent)
        cfg = f / ".hydra" / "config.yaml"
        out.append(Job(name=str(f.resolve().relative_to(root)) if f.resolve() != root else f.name,
                       regularizer=arm(s) if s.get("regularizer") else "?", seed=s.get("seed"),
                       status=str(s.get("status")), wall_time_s=s.get("wall_time_s"), error=s.get("error"),
                       overrides=tuple(map(str, s.get("overrides", []))),
                       config=cfg.read_text() if cfg.exists() else "", folder=f))
    return out


def jobs_from_runs(runs: Runs) -> list[Job]:
    """Jobs known only from ``Runs`` (W&B source): the loaded runs and the skipped ones."""
    done = [Job(name=r, regularizer=arm(s), seed=s.get("seed"), status=str(s.get("status")))
            for r, s in runs.summaries.items()]
    return done + [Job(name=s.split(":")[0], regularizer="?", seed=None, status="skipped", error=s) for s in runs.skipped]


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(uri: str, key: str, caption: str) -> str:
    return (f'<figure><img src="{uri}" alt="{esc(key)}" data-metric="{esc(key)}">'
            f"<figcaption><code>{esc(key)}</code> {esc(caption)}</figcaption></figure>")


def curve_figures(metrics: pd.DataFrame, name: str) -> list[str]:
    """Figures of the METRICS name ``name``: one per logged key it stands for that has values."""
    keys = keys_of(name, metrics.metric.unique()) if is_template(name) else [name]
    out = []
    for key in keys:
        smooth = smoothing_points(key)
        stats = curve_stats(metrics, key, smooth)
        if stats.empty:
            continue
        title = f"{key} ({smooth}-point rolling mean)" if smooth > 1 else key
        out.append(figure_html(png_data_uri(plot_curve(stats, key, title, key)), key, METRICS[name]))
    return out


def results_html(summaries: dict[str, dict]) -> str:
    """Held-out accuracy (%) per regularizer and source, mean ± half-width of the 95% CI (``analysis/stats.py``: none
    below 3 seeds), both protocols."""
    parts = []
    for protocol in ("best", "final"):
        t = results_table(summaries, protocol)
        if t.empty:
            continue
        sources = sorted(set(t.source) - {"mean"}) + ["mean"]
        cell = {(r.regularizer, r.source): cell_text(r["mean"], r.ci_low, r.ci_high, r.seeds) for _, r in t.iterrows()}
        head = "".join(f"<th>{esc(s)}</th>" for s in ["arm", "seeds", *sources])
        rows = "".join(
            f"<tr><td>{esc(label(reg))}</td><td>{int(t[t.regularizer == reg].seeds.max())}</td>"
            + "".join(f"<td>{esc(cell.get((reg, s), '-'))}</td>" for s in sources) + "</tr>"
            for reg in sorted(t.regularizer.unique()))
        what = "best evaluation during training (the paper's protocol)" if protocol == "best" else "last evaluation"
        parts.append(f'<table class="results"><caption>Held-out accuracy (%), {esc(what)}; mean ± half-width of the '
                     f"95% CI over seeds. {esc(ci_caption(t.method))}</caption><tr>{head}</tr>{rows}</table>")
    return f'<div class="tables">{"".join(parts)}</div>' if parts else "<p>No evaluations in any run.</p>"


def latest_samples(job: Job, table: str = "samples") -> tuple[int, list[dict]] | None:
    """(step, rows) of the last table ``table`` in the job's ``samples.jsonl``, or None."""
    path = job.folder / "samples.jsonl" if job.folder else None
    if path is None or not path.exists():
        return None
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if r.get("name") == table]
    return (recs[-1]["step"], recs[-1]["rows"]) if recs else None


def samples_html(jobs: list[Job]) -> str:
    rows = []
    for job in jobs:
        got = latest_samples(job) if job.status == "completed" else None
        if got is None:
            continue
        step, samples = got
        for r in samples[:SAMPLE_ROWS]:
            rows.append(f"<tr><td>{esc(job.name)}</td><td>{esc(step)}</td>"
                        + "".join(f"<td><pre>{esc(r.get(c))}</pre></td>" for c in SAMPLE_COLUMNS) + "</tr>")
    if not rows:
        return "<p>No sample tables logged (<code>metrics.samples_every</code>).</p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in ("run", "step", *SAMPLE_COLUMNS))
    return (f'<table class="samples"><caption>Latest logged sample completions, first {SAMPLE_ROWS} per run'
            f"</caption><tr>{head}</tr>{''.join(rows)}</table>")


def runs_html(jobs: list[Job]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("run", "regularizer", "seed", "status", "wall time (s)", "overrides"))
    rows = []
    for j in jobs:
        status = esc(j.status) + (f"<br><small>{esc(j.error)}</small>" if j.error else "")
        cfg = (f"<details><summary>config</summary><pre>{esc(j.config)}</pre></details>" if j.config else "")
        swatch = f'<span class="swatch" style="background:{esc(color(j.regularizer))}"></span>'
        rows.append(f'<tr class="status-{esc(j.status)}"><td>{esc(j.name)}</td><td>{swatch}{esc(j.regularizer)}</td>'
                    f"<td>{esc(j.seed)}</td><td>{status}</td><td>{esc(j.wall_time_s)}</td>"
                    f"<td><code>{esc(' '.join(j.overrides))}</code>{cfg}</td></tr>")
    return f'<table class="runs"><tr>{head}</tr>{"".join(rows)}</table>'


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1700px}
h1{font-size:1.5em;margin:0 0 .2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.reading{color:#444;max-width:70em} .missing{color:#777;font-size:.9em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}
figure{margin:0;border:1px solid #e3e3e3;border-radius:4px;padding:6px;background:#fff}
figure img{width:100%;height:auto} figure.wide{grid-column:1/-1} figure.wide img{width:auto;max-width:100%}
figcaption{font-size:.8em;color:#555} table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top} caption{text-align:left;color:#555}
pre{margin:0;white-space:pre-wrap;word-break:break-all;max-width:40em;font-size:.95em}
.tables{display:flex;flex-wrap:wrap;gap:0 2em}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border-radius:2px}
tr.status-completed td:nth-child(4){color:#17692b} tr.status-failed td:nth-child(4){color:#b00020}
"""


def build_page(runs: Runs, jobs: list[Job], title: str, hists: pd.DataFrame | None = None) -> str:
    """The page as a string. ``runs``: loaded completed runs; ``jobs``: every run to list; ``hists``: per-step
    sampled-probability histograms (``load_histograms``), None or empty to leave the ridge plot out."""
    body = []
    for section, names in SECTIONS.items():
        figs, missing, extra = [], [], ""
        for name in names:
            if name == "samples":
                extra += samples_html(jobs)
            elif name == "policy/sampled_prob_hist":
                if hists is not None and not hists.empty:
                    uri = png_data_uri(plot_prob_distribution(hists))
                    figs.append(figure_html(uri, name, METRICS[name]).replace("<figure>", '<figure class="wide">'))
                else:
                    missing.append(name)
            else:
                got = curve_figures(runs.metrics, name) if not runs.metrics.empty else []
                figs += got
                missing += [] if got else [name]
        if section == "Accuracy":
            extra = results_html(runs.summaries) + extra
        note = (f'<p class="missing">Not logged by these runs: {", ".join(f"<code>{esc(m)}</code>" for m in missing)}'
                "</p>" if missing else "")
        sid = esc(section.lower().replace(" ", "-"))
        body.append(f'<section id="{sid}"><h2>{esc(section)}</h2><p class="reading">{esc(READING[section])}</p>'
                    f'{extra}<div class="grid">{"".join(figs)}</div>{note}</section>')
    body.append(f'<section id="runs"><h2>Runs</h2>{runs_html(jobs)}</section>')
    arms = ", ".join(sorted({j.regularizer for j in jobs if j.status == "completed"}))
    n_done = sum(j.status == "completed" for j in jobs)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>{n_done} of {len(jobs)} runs completed; arms: {esc(arms)}. One line per "
            "regularizer: mean over seeds and its 95% CI band (analysis/stats.py: none below 3 seeds), against "
            "training step (rollout batches); "
            "per-step series smoothed as said in each title. Sections as in the W&amp;B workspace of "
            "<code>python -m lpreg.dashboard</code>.</p>" + "".join(body) + "</body></html>")


def write_dashboard(runs: Runs, jobs: list[Job], out: Path, title: str, from_folders: bool = True) -> Path:
    """Write ``out/dashboard.html``; returns its path."""
    hists = load_histograms(runs) if from_folders else None
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dashboard.html"
    path.write_text(build_page(runs, jobs, title, hists), encoding="utf-8")
    return path
