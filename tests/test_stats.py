"""Statistics of analysis/stats.py: hand-computed intervals and tests, the intervals' coverage by simulation, Holm's
adjustment, the robust aggregates."""

import math

import numpy as np
import pytest

from analysis.stats import (
    cell_text,
    ci_caption,
    detectable,
    excludes_zero,
    holm,
    iqm_ci,
    mean_ci,
    paired_table,
    paired_test,
    probability_of_improvement,
    results_table,
)


def test_ci_rule_by_number_of_seeds():
    two = mean_ci([0.5, 0.7])
    assert two["mean"] == pytest.approx(0.6) and math.isnan(two["low"]) and math.isnan(two["high"])
    assert two["method"] == "n<3" and two["n"] == 2
    # n = 3: mean 0.6, s = 0.1, half-width t_{2,.975}·s/√3 = 4.302653 · 0.0577350 = 0.248414
    three = mean_ci([0.5, 0.6, 0.7, float("nan")])
    assert three["method"] == "t" and three["n"] == 3
    assert (three["low"], three["high"]) == pytest.approx((0.6 - 0.248414, 0.6 + 0.248414), abs=1e-6)
    # n = 10: 0, .1, ..., .9: mean 0.45, s = 0.302765, t_{9,.975} = 2.262157: half-width 0.216588
    ten = mean_ci(np.arange(10) / 10)
    assert ten["method"] == "t" and (ten["low"], ten["high"]) == pytest.approx((0.233415, 0.666585), abs=1e-6)


COVERAGE_CASES = {  # per-seed accuracies: skewed towards 0, skewed towards 1, bimodal (a third of the seeds collapse)
    "skewed low, beta(2, 8)": (lambda rng, shape: rng.beta(2, 8, shape), 0.2),
    "skewed high, beta(8, 2)": (lambda rng, shape: rng.beta(8, 2, shape), 0.8),
    "bimodal, 35% collapsed": (lambda rng, shape: np.where(rng.random(shape) < 0.35, rng.beta(2, 30, shape),
                                                          rng.beta(30, 12, shape)), 0.35 * 2 / 32 + 0.65 * 30 / 42),
}


@pytest.mark.parametrize("case", list(COVERAGE_CASES))
@pytest.mark.parametrize("n", [10, 13, 20])
def test_the_reported_interval_covers_the_true_mean(case, n):
    """The 95% interval of a mean over n seeds covers the true mean at least 92% of the time (20,000 simulated
    studies each; the Monte-Carlo error of the coverage is about 0.2 points)."""
    sample, true = COVERAGE_CASES[case]
    rng = np.random.default_rng(7)
    x = sample(rng, (20_000, n))
    cis = [mean_ci(row) for row in x[:300]]  # the reported function itself on a part ...
    m, s = x.mean(1), x.std(1, ddof=1)  # ... and its formula, vectorized, on all of them
    from scipy import stats

    half = stats.t.ppf(0.975, n - 1) * s / np.sqrt(n)
    np.testing.assert_allclose([[c["low"], c["high"]] for c in cis], np.stack([m - half, m + half], 1)[:300])
    coverage = np.mean((m - half <= true) & (true <= m + half))
    assert coverage >= 0.92, (case, n, coverage)


def test_holm_adjustment():
    # p sorted 0.01, 0.02, 0.04 over m = 3: 0.03, 0.04, 0.04 (step-down, monotone); NaN stays out of the family
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    adj = holm([0.01, float("nan"), 0.03])
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.03)
    assert holm([0.038, 0.2, 0.5])[0] == pytest.approx(0.114)  # 0.038 alone would pass 0.05; over three it does not


def test_paired_test_and_detectable_difference():
    a, b = [0.6, 0.65, 0.65, 0.7], [0.5, 0.6, 0.55, 0.62]
    t = paired_test(a, b)
    from scipy import stats

    assert t["diff"] == pytest.approx(0.0825) and t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # (t_{3,.975} + t_{3,.8}) · sd / 2 = (3.182446 + 0.978472) · sd / 2
    assert detectable(t["sd"], 4) == pytest.approx((3.182446 + 0.978472) * t["sd"] / 2, rel=1e-5)
    assert math.isnan(paired_test([0.1, 0.2], [0.0, 0.1])["p"])  # two pairs: no test


def test_iqm_and_probability_of_improvement():
    scores = {"a": np.array([0.1, 0.5, 0.6, 0.7, 0.9, 0.55, 0.65, 0.6]), "b": np.array([0.2] * 8)}
    est = iqm_ci(scores)
    iqm = float(np.mean(np.sort(scores["a"])[2:6]))  # the middle half of 8 values
    assert est["a"][0] == pytest.approx(iqm) and est["a"][1] <= iqm <= est["a"][2]
    assert est["b"] == pytest.approx((0.2, 0.2, 0.2))
    assert probability_of_improvement(scores["a"], scores["b"]) == pytest.approx(7 / 8)  # 0.1 < 0.2 < the rest
    assert probability_of_improvement([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.5)  # ties count half


def summaries(table):
    """``{run: summary}`` with eval/mean best values from ``{(reg, seed): value}``."""
    return {f"{reg}-{seed}": {"regularizer": reg, "seed": seed, "best": {"eval/mean": v, "eval/arith/acc": v}}
            for (reg, seed), v in table.items()}


def test_paired_differences_by_seed():
    runs = summaries({("none", 0): 0.50, ("none", 1): 0.60, ("none", 2): 0.55,
                      ("lpreg", 0): 0.60, ("lpreg", 1): 0.65, ("lpreg", 2): 0.65,
                      ("entropy", 0): 0.70, ("entropy", 1): 0.40, ("entropy", 5): 0.99})
    t = paired_table(runs, "best").set_index(["regularizer", "source"])
    # lpreg − none per seed: 0.10, 0.05, 0.10 -> mean 0.083333, s = 0.0288675, half = 4.302653 · s/√3 = 0.0717109
    lp = t.loc[("lpreg", "mean")]
    assert lp["diff"] == pytest.approx(0.0833333, abs=1e-6) and lp.pairs == 3 and lp.method == "t"
    assert (lp.ci_low, lp.ci_high) == pytest.approx((0.0116224, 0.1550442), abs=1e-6)
    assert lp.excludes_zero
    # the unpaired intervals of the two arms overlap: only the pairing shows the difference
    r = results_table(runs, "best").set_index(["regularizer", "source"])
    assert r.loc[("lpreg", "mean"), "ci_low"] < r.loc[("none", "mean"), "ci_high"]
    # entropy shares seeds 0 and 1 with none (seed 5 has no partner): 2 pairs, no CI, never "excludes zero"
    en = t.loc[("entropy", "mean")]
    assert en.pairs == 2 and en["diff"] == pytest.approx(0.0) and math.isnan(en.ci_low) and not en.excludes_zero
    assert "none" not in t.index.get_level_values(0)


def test_cells_and_captions():
    assert cell_text(0.6, 0.351586, 0.848414, 3) == "60.00 ± 24.84"
    assert cell_text(0.6, math.nan, math.nan, 2) == "60.00 (n=2, no CI)"
    assert excludes_zero(0.01, 0.2) and excludes_zero(-0.2, -0.01) and not excludes_zero(-0.01, 0.2)
    assert not excludes_zero(math.nan, math.nan)
    assert "Student t-interval" in ci_caption(["t", "n<3"]) and "No CI where fewer than 3" in ci_caption(["t", "n<3"])
    assert ci_caption(["n<3"]).startswith("No CI")
