"""The comparison protocol's report (analysis/protocol.py) on a protocol folder written by hand: the stage-C scores
it reads, the primary contrast's role, Holm over the family, the verdict in words, and the files it writes."""

import json
import math

import numpy as np
import pytest
from scipy import stats

import analysis.protocol as report
from analysis.protocol import contrasts, protocol_table, verdict, write_protocol

SEEDS = list(range(100, 113))
PRE = {"name": "p", "objective": {"metric": "eval/mean", "mode": "final"}, "horizon": {"steps": 100, "eval_every": 50},
       "task": "arithmetic", "arms": ["lpreg", "entropy", "none"], "lr_grid": [1e-4, 2e-4, 4e-4, 8e-4],
       "grid_seeds": [0, 1, 2], "extend_grid": True, "tune_trials": 10, "tune_seeds": [0], "startup_trials": 3,
       "test_seeds": SEEDS, "departures": [],
       "primary": {"arm": "lpreg", "against": "the best other non-control arm on validation (stage B)",
                   "alpha": 0.05, "test": "paired t-test over test seeds, Holm-adjusted over the family"}}


def folder_with(tmp_path, scores: dict[str, list[float]], baseline: str):
    arms = {}
    for arm, values in scores.items():
        for seed, v in zip(SEEDS, values):
            d = tmp_path / f"C_{arm}_s{seed}"
            d.mkdir()
            (d / "summary.json").write_text(json.dumps({"status": "completed", "seed": seed, "objective": v}))
        arms[arm] = {"stage_a": {"cells": {"0.0001": 0.4, "0.0002": 0.5}, "lr": 2e-4, "value": 0.5, "extended": None},
                     "stage_b": None, "winner": {"trainer.lr": 2e-4}, "validation": 0.5,
                     "test_dirs": [f"C_{arm}_s{s}" for s in SEEDS]}
    (tmp_path / "C_none_s100" / "summary.json").write_text(json.dumps({"status": "failed", "seed": 100}))
    record = {"preregistration": PRE, "arms": arms, "baseline": baseline}
    (tmp_path / "protocol.json").write_text(json.dumps(record))
    return record


def test_contrasts_roles_holm_and_verdict(tmp_path):
    rng = np.random.default_rng(0)
    none = rng.uniform(0.4, 0.6, len(SEEDS))
    scores = {"lpreg": list(none + 0.05 + rng.normal(0, 0.01, len(SEEDS))),  # clearly above both
              "entropy": list(none + rng.normal(0, 0.01, len(SEEDS))), "none": list(none)}
    record = folder_with(tmp_path, scores, baseline="entropy")
    got = report.test_scores(tmp_path, record)
    assert sorted(got["lpreg"]) == SEEDS and 100 not in got["none"]  # a failed run is not scored
    con = contrasts(record, got).set_index("other")
    assert con.loc["entropy", "role"] == "primary" and con.loc["none", "role"] == "exploratory"
    # the paired t-test over the seeds both arms completed, then Holm over the two contrasts
    p_e = stats.ttest_rel(scores["lpreg"], scores["entropy"]).pvalue
    p_n = stats.ttest_rel(scores["lpreg"][1:], scores["none"][1:]).pvalue
    assert con.loc["entropy", "p"] == pytest.approx(p_e) and con.loc["none", "n"] == len(SEEDS) - 1
    lo, hi = sorted([p_e, p_n])
    holm = {p_e: None, p_n: None}
    holm[lo], holm[hi] = min(1, 2 * lo), max(min(1, 2 * lo), hi)
    assert con.loc["entropy", "p_holm"] == pytest.approx(holm[p_e])
    assert con.loc["none", "p_holm"] == pytest.approx(holm[p_n])
    assert verdict(con.loc["entropy"], 0.05).startswith("**Supported.**")
    table = protocol_table(record, got).set_index("arm")
    assert table.loc["lpreg", "test_n"] == len(SEEDS) and table.loc["none", "test_n"] == len(SEEDS) - 1
    assert table.loc["lpreg", "poi_vs_none"] > 0.5 and math.isnan(table.loc["none", "poi_vs_none"])
    written = write_protocol(tmp_path, tmp_path / "figures")
    text = (tmp_path / "figures" / "protocol.md").read_text()
    assert all(p.exists() for p in written) and "**entropy**" in text and "**Supported.**" in text


def test_an_effect_that_does_not_survive_is_inconclusive_with_the_detectable_difference(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.7, len(SEEDS))
    scores = {"lpreg": list(base + rng.normal(0, 0.05, len(SEEDS))), "entropy": list(base), "none": list(base)}
    record = folder_with(tmp_path, scores, baseline="entropy")
    row = contrasts(record, report.test_scores(tmp_path, record)).set_index("other").loc["entropy"]
    assert row["p_holm"] >= 0.05
    text = verdict(row, 0.05)
    assert text.startswith("**Inconclusive.**") and f"{100 * row['mde']:.2f} points" in text and "80% power" in text
    below = {**scores, "lpreg": list(base - 0.1 + rng.normal(0, 0.01, len(SEEDS)))}
    for d in tmp_path.iterdir():
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    record = folder_with(tmp_path, below, baseline="entropy")
    row = contrasts(record, report.test_scores(tmp_path, record)).set_index("other").loc["entropy"]
    assert verdict(row, 0.05).startswith("**Contradicted.**")
