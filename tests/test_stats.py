"""Statistics of analysis/stats.py against hand-computed values: t quantiles, the CI rule by n, paired differences."""

import math

import numpy as np
import pytest

from analysis.stats import cell_text, ci_caption, excludes_zero, mean_ci, paired_table, results_table, t_quantile


@pytest.mark.parametrize("df,expected", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157)])
def test_t_quantile_matches_the_tabulated_values(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-6)


def test_ci_rule_by_number_of_seeds():
    two = mean_ci([0.5, 0.7])
    assert two["mean"] == pytest.approx(0.6) and math.isnan(two["low"]) and math.isnan(two["high"])
    assert two["method"] == "n<3" and two["n"] == 2
    # n = 3: mean 0.6, s = 0.1, half-width t_{2,.975}·s/√3 = 4.302653 · 0.0577350 = 0.248414
    three = mean_ci([0.5, 0.6, 0.7, float("nan")])
    assert three["method"] == "t" and three["n"] == 3
    assert (three["low"], three["high"]) == pytest.approx((0.6 - 0.248414, 0.6 + 0.248414), abs=1e-6)
    ten = mean_ci(np.arange(10) / 10)  # mean 0.45; the bootstrap interval lies inside the data's range
    assert ten["method"] == "bootstrap" and ten["low"] < 0.45 < ten["high"] and 0 < ten["low"] and ten["high"] < 0.9


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
