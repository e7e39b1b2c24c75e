"""Analysis of lpreg runs: load (folders or W&B) -> tidy DataFrame -> statistics -> figures and tables.

Each step is a pure function usable from a notebook (see ``ablation.ipynb``); ``plots.py`` is the CLI.
"""

from analysis.load import load_histograms, load_runs, load_wandb
from analysis.stats import curve_stats, holm, iqm_ci, mean_ci, paired_table, paired_test, results_table

__all__ = ["curve_stats", "holm", "iqm_ci", "load_histograms", "load_runs", "load_wandb", "mean_ci", "paired_table",
           "paired_test", "results_table"]
