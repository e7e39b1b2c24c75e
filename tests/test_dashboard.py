"""The dashboard: the W&B workspace object (no server here: built, serialized, never saved), the command's fast
failure without network, and the HTML twin from a real 2-arm x 2-seed multirun, opened in headless Chromium."""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from lpreg.core.metrics import METRICS, SECTIONS, SMOOTHING_POINTS, is_template, keys_of, metric_regex

# --- the W&B workspace object ------------------------------------------------------------------------------------


def panel_metric(p) -> str:
    """The METRICS name a panel shows, read from the panel object itself."""
    if type(p).__name__ == "WeavePanelSummaryTable":
        return p.table_name
    if p.metric_regex:
        assert p.y == [] and p.metric_regex == metric_regex(p.title), p.title
        return p.title
    assert len(p.y) == 1, p.y
    return p.y[0].name if hasattr(p.y[0], "name") else p.y[0]


def test_every_metric_is_in_exactly_one_section():
    names = [n for ns in SECTIONS.values() for n in ns]
    assert len(names) == len(set(names)), "a metric is in two sections"
    assert set(names) == set(METRICS), f"not in METRICS: {set(names) - set(METRICS)}; " \
                                       f"on no dashboard section: {set(METRICS) - set(names)}"
    assert list(SECTIONS) == ["Entropy collapse", "Accuracy", "Lp-Reg internals", "Optimization", "Sparks", "Samples",
                              "Speed"]
    assert SECTIONS["Entropy collapse"] == ("policy/entropy", "policy/lowprob_frac", "policy/lowprob_mass",
                                            "policy/lowprob_count", "policy/tail_mass", "policy/sampled_prob_mean")
    assert "lpreg/div_mean" in SECTIONS["Lp-Reg internals"] and "lpreg/k3_mean" not in METRICS


def test_metric_templates_match_the_logged_keys():
    logged = ["eval/arithmetic/pass@2", "eval/aime/pass@16", "eval/mean", "eval/a/b/pass@2", "eval/x/pass@k",
              "timing/update", "timing/eval", "perf/tokens_per_s"]
    assert keys_of("eval/<source>/pass@k", logged) == ["eval/aime/pass@16", "eval/arithmetic/pass@2"]
    assert keys_of("timing/<phase>", logged) == ["timing/eval", "timing/update"]
    assert keys_of("eval/mean", logged) == ["eval/mean"] and not is_template("eval/mean")
    assert metric_regex("lpreg/div_mean") == r"^lpreg/div_mean$"
    with pytest.raises(KeyError, match="lpreg/k3_mean.*METRICS"):
        metric_regex("lpreg/k3_mean")


def test_workspace_object_sections_panels_grouping():
    import wandb_workspaces.workspaces as ws

    from lpreg.dashboard import BAND, GROUP_BY, X_AXIS, build_workspace

    w = build_workspace("me", "lpreg", name="morning", group="2026-01-01/09-00-00")
    assert (w.entity, w.project, w.name) == ("me", "lpreg", "morning")
    assert [s.name for s in w.sections] == list(SECTIONS)
    assert [k.name for k in w.runset_settings.groupby] == [GROUP_BY] == ["JobType"]
    assert w.settings.x_axis == X_AXIS == "train/step"
    for s in w.sections:
        shown = [panel_metric(p) for p in s.panels]
        assert shown == list(SECTIONS[s.name]), s.name
        for p, name in zip(s.panels, shown):
            assert name in METRICS
            if type(p).__name__ == "WeavePanelSummaryTable":
                continue
            assert p.x == X_AXIS
            if name == "policy/sampled_prob_hist":  # a histogram series: drawn per run, not averaged
                assert p.groupby is None
                continue
            assert (p.groupby, p.groupby_aggfunc, p.groupby_rangefunc) == (GROUP_BY, "mean", BAND)
            smoothed = (p.smoothing_type, p.smoothing_factor)
            assert smoothed == ((None, None) if name.startswith("eval/") else ("average", SMOOTHING_POINTS)), name
    # the wire form W&B stores: grouped by the run's job type, only the group's runs, a regex panel per template
    spec = w._to_model().spec.model_dump(by_alias=True, exclude_none=True)["section"]
    runset = spec["runSets"][0]
    assert runset["grouping"] == [{"section": "run", "name": "jobType"}]
    assert runset["filters"]["filters"][0]["key"] == {"section": "run", "name": "group"}
    assert runset["filters"]["filters"][0]["value"] == "2026-01-01/09-00-00"
    wire = {p["config"]["chartTitle"]: p["config"] for s in spec["panelBankConfig"]["sections"] for p in s["panels"]
            if "chartTitle" in p.get("config", {})}
    assert wire["policy/entropy"]["groupBy"] == "jobType" and wire["policy/entropy"]["xAxis"] == "train/step"
    assert re.match(wire["eval/<source>/pass@k"]["metricRegex"], "eval/arithmetic/pass@2")
    assert wire["eval/<source>/pass@k"]["useMetricRegex"] is True
    # and the library reads it back to the same sections and panels
    back = ws.Workspace._from_model(w._to_model())
    assert [[panel_metric(p) for p in s.panels] for s in back.sections] == [list(v) for v in SECTIONS.values()]
    assert build_workspace("me", "lpreg").runset_settings.filters == ""


def test_a_renamed_metric_cannot_become_a_dead_panel():
    from lpreg.dashboard import panel

    with pytest.raises(KeyError, match="lpreg/k3_mean"):
        panel("lpreg/k3_mean")


def test_report_object_has_the_same_sections_and_reading_text():
    import wandb_workspaces.reports.v2 as wr

    from lpreg.dashboard import READING, build_report

    r = build_report("me", "lpreg", title="morning", group="g")
    heads = [b for b in r.blocks if isinstance(b, wr.H2)]
    grids = [b for b in r.blocks if isinstance(b, wr.PanelGrid)]
    assert [h.text for h in heads] == list(SECTIONS)
    assert [[panel_metric(p) for p in g.panels] for g in grids] == [list(v) for v in SECTIONS.values()]
    texts = [b.text for b in r.blocks if isinstance(b, wr.P)]
    assert all(READING[s] in texts for s in SECTIONS)
    assert all(g.runsets[0].groupby == ["run.jobType"] and "'g'" in g.runsets[0].filters for g in grids)


def test_find_view_matches_the_display_name():
    from lpreg.dashboard import find_view

    views = {"project": {"allViews": {"edges": [{"node": {"id": "1", "name": "nw-a-v", "displayName": "other"}},
                                                {"node": {"id": "2", "name": "nw-b-v", "displayName": "morning"}}]}}}
    seen = []
    execute = lambda q, v: seen.append(v) or views
    assert find_view("me", "lpreg", "morning", execute) == ("nw-b-v", "2")
    assert find_view("me", "lpreg", "evening", execute) is None
    assert seen[0]["entityName"] == "me" and seen[0]["name"] == "lpreg"
    with pytest.raises(ValueError, match="me/nope not found"):
        find_view("me", "nope", "morning", lambda q, v: {"project": None})


def test_command_without_network_fails_fast_with_a_clear_message():
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
           "PYTHONPATH": str(ROOT)}
    env.pop("WANDB_MODE")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lpreg.dashboard", "me/lpreg", "--report"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach the W&B server http://127.0.0.1:{port}" in proc.stderr and "--dashboard" in proc.stderr
    assert time.monotonic() - t0 < 60
    bad = subprocess.run([sys.executable, "-m", "lpreg.dashboard", "lpreg"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "ENTITY/PROJECT" in bad.stderr


# --- the HTML twin -----------------------------------------------------------------------------------------------

RUN_MARKUP = "<img src=x onerror=console.error('run-name')>"
SAMPLE_MARKUP = "<script>console.error('sample')</script>"
CONFIG_MARKUP = "<b onmouseover=console.error('config')>"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """dashboard.html of a real 2-arm x 2-seed multirun, plus a failed job and a job whose run name, sample and
    config carry markup; returns (html text, multirun folder)."""
    base = tmp_path_factory.mktemp("dashboard")
    run_cli(["-m", "regularizer=lpreg,none", "seed=0,1", "trainer.steps=4", "trainer.prompts_per_step=4",
             "eval.every=2", "eval.samples=2", "metrics.samples_every=2", f"hydra.sweep.dir={base}/mr"], cwd=base)
    mr = base / "mr"
    failed = mr / "9_failed"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom <b>", "regularizer": "none",
                                                     "seed": 3}))
    hostile = mr / f"4_{RUN_MARKUP}"
    shutil.copytree(mr / "2_none_s0", hostile)
    recs = [json.loads(ln) for ln in (hostile / "samples.jsonl").read_text().splitlines()]
    recs[-1]["rows"][0]["response"] = SAMPLE_MARKUP
    (hostile / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with open(hostile / ".hydra" / "config.yaml", "a") as fh:
        fh.write(f'note: "{CONFIG_MARKUP}"\n')
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(mr), "--dashboard"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = mr / "figures" / "dashboard.html"
    assert f"wrote {out}" in proc.stdout
    return out.read_text(encoding="utf-8"), mr


def test_page_has_the_sections_and_every_figure_it_references(page):
    text, mr = page
    assert re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', text) == [
        (s.lower().replace(" ", "-"), s.replace("&", "&amp;")) for s in SECTIONS] + [("runs", "Runs")]
    refs = re.findall(r'\b(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith("data:") for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-metric="([^"]+)"', text)
    assert len(imgs) == text.count("<img ")
    for b64, metric in imgs:
        png = base64.b64decode(b64, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, metric
    shown = {m for _, m in imgs}
    logged = set()
    for f in ("metrics.jsonl", "timing.jsonl"):
        for ln in (mr / "0_lpreg_s0" / f).read_text().splitlines():
            logged |= {k for k, v in json.loads(ln).items() if k != "step" and v is not None}
    assert logged <= shown, f"logged but not on the page: {logged - shown}"  # every logged series has its figure
    assert {"eval/arithmetic/pass@2", "timing/update", "lpreg/div_mean", "policy/sampled_prob_hist"} <= shown
    assert "Not logged by these runs: <code>kl_cov/selected</code>" in text  # never silently dropped


def test_page_tables_equal_the_runs(page):
    import html

    from analysis import load_runs, results_table

    text, mr = page
    runs = load_runs([mr])
    t = results_table(runs.summaries, "best").set_index(["regularizer", "source"])
    m = t.loc[("lpreg", "mean"), "mean"]
    assert f"<td>Lp-Reg</td><td>2</td><td>{100 * t.loc[('lpreg', 'arithmetic'), 'mean']:.2f}" in text
    assert f"{100 * m:.2f} (n=2, no CI)" in text and "No CI where fewer than 3 seeds ran" in text  # 2 seeds: no CI
    rows = re.findall(r'<tr class="status-([a-z]+)"><td>([^<]*)</td>', text)
    assert ("failed", "9_failed") in rows and ("completed", "0_lpreg_s0") in rows and len(rows) == 6
    assert "boom &lt;b&gt;" in text and "regularizer=lpreg" in text and "trainer:" in text  # error, overrides, config
    tables = [json.loads(ln) for ln in (mr / "1_lpreg_s1" / "samples.jsonl").read_text().splitlines()]
    last = max((t for t in tables if t["name"] == "samples"), key=lambda t: t["step"])  # other tables share steps
    step, samples = last["step"], last["rows"]
    assert f"<td>1_lpreg_s1</td><td>{step}</td><td><pre>{html.escape(samples[0]['prompt'])}</pre>" in text


def test_untrusted_text_is_escaped(page):
    import html

    text, _ = page
    for markup in (RUN_MARKUP, SAMPLE_MARKUP, CONFIG_MARKUP):
        assert markup not in text
        assert html.escape(markup, quote=True) in text
    assert "<script" not in text.lower()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", *extra, url],
        capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: run scripts/install_browser.sh as root")
def test_page_opens_in_headless_chromium_without_console_messages(page, tmp_path):
    _, mr = page
    canary = tmp_path / "canary.html"  # the check itself must see a console error when there is one
    canary.write_text("<!DOCTYPE html><html><body><script>console.error('canary')</script></body></html>")
    assert any("canary" in m for m in console_messages(chromium(canary.as_uri(), tmp_path, "--dump-dom").stderr))
    proc = chromium((mr / "figures" / "dashboard.html").as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    dom = proc.stdout
    assert all(f"<h2>{s.replace('&', '&amp;')}</h2>" in dom for s in SECTIONS) and dom.count("<img ") > 30
