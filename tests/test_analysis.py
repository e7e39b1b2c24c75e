"""End-to-end analysis: a real small multirun (2 arms x 2 seeds), the plots CLI, tables, and the notebook."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    base = tmp_path_factory.mktemp("analysis")
    run_cli(["-m", "regularizer=lpreg,none", "seed=0,1", "trainer.steps=4", "trainer.prompts_per_step=4",
             "eval.every=2", "eval.samples=2", f"hydra.sweep.dir={base}/mr"], cwd=base)
    mr = base / "mr"
    crashed = mr / "9_crashed"  # a crashed job and a partial one, as a real multirun can leave them
    crashed.mkdir()
    (crashed / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom", "regularizer": "none"}))
    partial = mr / "8_partial"
    shutil.copytree(mr / "0_lpreg_s0", partial)
    (partial / "metrics.jsonl").unlink()
    return mr


def test_cli_writes_figures_and_tables(multirun):
    out = multirun / "figs"
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(multirun), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout and "9_crashed" in proc.stdout and "8_partial" in proc.stdout
    stems = ["policy_entropy", "eval_mean", "policy_lowprob_frac", "policy_tail_mass", "train_response_len_mean",
             "lpreg_delta", "lpreg_reg_ratio", "prob_distribution"]
    for stem in stems:
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, stem
    for protocol in ("best", "final"):
        for stem in ("results", "paired"):
            for ext in ("md", "tex", "csv"):
                assert (out / f"{stem}_{protocol}.{ext}").stat().st_size > 0
    text = (out / "results_best.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| lpreg") or line.startswith("| none")]
    assert "best evaluation during training" in text and len(rows) == 2
    assert all("(n=2, no CI)" in r and "±" not in r for r in rows)  # 2 seeds: no CI is printed
    paired = (out / "paired_best.md").read_text()
    assert "paired by seed" in paired and "| lpreg | 2 |" in paired and "(n=2, no CI)" in paired


def test_plotted_mean_equals_pandas_mean_and_ci_contains_it(multirun):
    from analysis import curve_stats, load_runs
    from analysis.figures import plot_curve

    runs = load_runs([multirun])
    df = runs.metrics
    stats = curve_stats(df, "policy/entropy")
    expected = df[df.metric == "policy/entropy"].groupby(["regularizer", "step"]).value.mean()
    got = stats.set_index(["regularizer", "step"])["mean"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert (stats.n == 2).all() and stats.low.isna().all() and stats.high.isna().all()  # no CI from 2 seeds
    three = pd.concat([df, df[df.seed == 0].assign(run=lambda d: d.run + "-copy", seed=7)])  # a third seed
    stats3 = curve_stats(three, "policy/entropy")
    assert (stats3.n == 3).all() and (stats3.method == "t").all()
    assert ((stats3.low <= stats3["mean"] + 1e-12) & (stats3["mean"] <= stats3.high + 1e-12)).all()
    fig = plot_curve(stats, "policy/entropy")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("Lp-Reg"))
    np.testing.assert_allclose(line.get_ydata(), expected.loc["lpreg"].sort_index().to_numpy())


def test_results_table_equals_the_summaries(multirun):
    from analysis import load_runs, results_table

    runs = load_runs([multirun])
    assert len(runs.summaries) == 4 and len(runs.skipped) == 2
    for protocol in ("best", "final"):
        table = results_table(runs.summaries, protocol).set_index(["regularizer", "source"])
        for reg in ("lpreg", "none"):
            vals = [s[protocol]["eval/mean"] for s in runs.summaries.values() if s["regularizer"] == reg]
            assert table.loc[(reg, "mean"), "mean"] == pytest.approx(np.mean(vals))
            assert table.loc[(reg, "arithmetic"), "mean"] == pytest.approx(
                np.mean([s[protocol]["eval/arithmetic/acc"] for s in runs.summaries.values() if s["regularizer"] == reg]))
            assert table.loc[(reg, "mean"), "method"] == "n<3"  # 2 seeds: no interval
            assert table.loc[(reg, "mean"), ["ci_low", "ci_high"]].isna().all()
    best = results_table(runs.summaries, "best").set_index(["regularizer", "source"])
    final = results_table(runs.summaries, "final").set_index(["regularizer", "source"])
    assert (best["mean"] >= final["mean"] - 1e-12).all()


def test_missing_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_wandb_loader_builds_the_same_tidy_frame():
    from analysis import load_wandb

    class Run:
        def __init__(self, rid, reg, seed, state="finished"):
            self.id, self.name, self.state = rid, f"{reg}-s{seed}", state
            self.config = {"regularizer": {"name": reg}, "seed": seed}
            self.summary = {"final/eval/mean": 0.5, "best/eval/mean": 0.6, "final/eval/arithmetic/acc": 0.5}

        def scan_history(self):
            return [{"train/step": 0, "eval/mean": 0.4, "_runtime": 3}, {"train/step": 1, "policy/entropy": 0.3}]

    class Api:
        def runs(self, path, filters=None):
            assert path == "me/lpreg" and filters == {"group": "g"}
            return [Run("a", "lpreg", 0), Run("b", "none", 1, state="crashed")]

    runs = load_wandb("me/lpreg", "g", api=Api())
    assert runs.skipped == ["none-s1: W&B state crashed"]
    assert sorted(runs.metrics.metric) == ["eval/mean", "policy/entropy"]
    assert runs.summaries["wandb:a"]["best"]["eval/mean"] == 0.6


def test_notebook_executes_top_to_bottom(multirun):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "analysis" / "ablation.ipynb", as_version=4)
    os.environ["LPREG_MULTIRUN"] = str(multirun)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    finally:
        del os.environ["LPREG_MULTIRUN"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("lpreg" in json.dumps(o.get("data", {})) for o in outputs)
