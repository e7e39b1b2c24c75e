"""The embedded study (issue 14): its report's arithmetic on hand-made runs, and a reduced smoke run of the study
command end to end (the full study takes ~45 min: docs/embedded_study.md)."""

import json
import math
import re
import statistics
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, run_cli
from scipy.stats import t as student_t

from analysis.load import Runs
from analysis.study import claims, detectable, paired, run_features

ARMS = ["none", "entropy", "entropy_large", "clip_higher", "lpreg", "highent_8020"]


def fake_runs(spec: dict[str, tuple[float, float, float]], seeds=(0, 1, 2, 3, 4), steps=40) -> Runs:
    """Runs whose entropy goes linearly from ``start`` to ``end`` and whose last_mean accuracy is ``acc`` + a
    per-seed offset shared by all arms (so paired differences are exact)."""
    rows, summaries = [], {}
    for a, (start, end, acc) in spec.items():
        for seed in seeds:
            run = f"{a}_s{seed}"
            for step in range(1, steps + 1):
                rows.append((run, a, seed, step, "policy/entropy", start + (end - start) * (step - 1) / (steps - 1)))
                rows.append((run, a, seed, step, "policy/lowprob_mass", 0.01 if a == "lpreg" else 0.005))
            off = 0.01 * seed
            summaries[run] = {"regularizer": a.split("_large")[0], "arm": a, "seed": seed, "status": "completed",
                              "initial": {"eval/mean": 0.35},
                              "last_mean": {"eval/mean": acc + off, "eval/arithmetic/pass@1": acc + off,
                                            "eval/arithmetic/pass@4": acc + off + (0.1 if a == "lpreg" else 0.05)}}
    return Runs(pd.DataFrame(rows, columns=["run", "regularizer", "seed", "step", "metric", "value"]), summaries, [])


def test_features_and_paired_differences_are_the_hand_computed_ones():
    runs = fake_runs({"none": (0.5, 0.1, 0.60), "lpreg": (0.5, 0.3, 0.66)})
    df = run_features(runs)
    none = df[df.arm == "none"].iloc[0]
    # start = mean of the first 10 of 40 linearly spaced values from 0.5 to 0.1; end = the last 10
    step = 0.4 / 39
    assert none.ent_start == pytest.approx(0.5 - step * 4.5) and none.ent_end == pytest.approx(0.1 + step * 4.5)
    assert none.lost == pytest.approx(1 - none.ent_end / none.ent_start)
    # the peak is a full 10-step mean (here the first one), never step 1's single value (0.5)
    assert none.ent_peak == pytest.approx(none.ent_start)
    # ent_q3: the 10 steps that end at step 30 (3/4 of 40), i.e. steps 21-30
    assert none.ent_q3 == pytest.approx(0.5 - step * 24.5)
    assert none.k == 4 and none.passk == pytest.approx(0.60 + 0.05)
    d = paired(df, "acc", "lpreg", "none")
    assert d["mean"] == pytest.approx(0.06) and d["n"] == 5 and d["excludes_zero"]  # identical offsets: zero width
    assert d["high"] - d["low"] == pytest.approx(0.0, abs=1e-12)


def test_detectable_difference_is_the_t_interval_half_width():
    runs = fake_runs({"none": (0.5, 0.1, 0.60), "lpreg": (0.5, 0.3, 0.66)})
    for s in runs.summaries.values():  # give lpreg seed-dependent noise: differences 0, .02, -.02, .04, -.04
        if s["arm"] == "lpreg":
            s["last_mean"]["eval/mean"] += [0, 0.02, -0.02, 0.04, -0.04][s["seed"]]
    half = detectable(run_features(runs))
    expected_sd = statistics.stdev([0.06, 0.08, 0.04, 0.10, 0.02])
    assert half == pytest.approx({"lpreg": student_t.ppf(0.975, 4) * expected_sd / math.sqrt(5)})
    # at 80% power: (t_{4, .975} + t_{4, .8}) * SD / sqrt(5); t_{4, .8} = 0.9410 (tables)
    mdd = detectable(run_features(runs), power=0.8)
    assert mdd["lpreg"] == pytest.approx((student_t.ppf(0.975, 4) + 0.9410) * expected_sd / math.sqrt(5), rel=1e-4)
    assert detectable(run_features(fake_runs({"none": (0.5, 0.1, 0.6), "lpreg": (0.5, 0.3, 0.66)}, seeds=(0, 1)))) == {}


def test_a_seed_run_twice_counts_once_with_the_mean_of_its_runs():
    runs = fake_runs({"none": (0.5, 0.1, 0.60), "lpreg": (0.5, 0.3, 0.66)})
    again = dict(runs.summaries["lpreg_s0"], last_mean={"eval/mean": 0.66 + 0.10})  # a rerun of seed 0, +10 points
    runs.summaries["lpreg_s0_again"] = again
    d = paired(run_features(runs), "acc", "lpreg", "none")
    assert d["n"] == 5 and d["mean"] == pytest.approx(0.06 + 0.05 / 5)  # seed 0's difference: (0.06 + 0.16) / 2


def test_claims_follow_the_measurements():
    text = dict(claims(run_features(fake_runs({
        "none": (0.5, 0.05, 0.60), "entropy": (0.5, 0.05, 0.60), "entropy_large": (0.5, 1.5, 0.30),
        "clip_higher": (0.5, 0.6, 0.60), "lpreg": (0.5, 0.3, 0.66), "highent_8020": (0.5, 0.2, 0.62)}))))
    by_start = lambda prefix: next(v for k, v in text.items() if k.startswith(prefix))
    assert by_start("GRPO's entropy collapses").startswith("**Reproduced.**")  # lost 1 - 0.096/0.454 = 79 % >= 70 %
    assert by_start("A large entropy bonus").startswith("**Reproduced.**")  # entropy x2.6 and accuracy -30 points
    assert by_start("Clip-Higher").startswith("**Reproduced.**")
    assert by_start("Lp-Reg keeps entropy").startswith("**Reproduced.**")
    assert by_start("Lp-Reg preserves").startswith("**Reproduced.**")
    assert by_start("Lp-Reg is more accurate than GRPO").startswith("**Reproduced.**")
    # GRPO keeping its entropy, Lp-Reg less accurate than 80/20: the verdicts turn
    text = dict(claims(run_features(fake_runs({"none": (0.5, 0.4, 0.60), "lpreg": (0.5, 0.45, 0.58),
                                               "highent_8020": (0.5, 0.3, 0.62)}))))
    assert by_start("GRPO's entropy collapses").startswith("**Not reproduced.**")
    assert by_start("Lp-Reg is more accurate than the paper's strongest").startswith("**Contradicted.**")
    # GRPO's fall is mild: Lp-Reg above it is only a partial reproduction; the most accurate baseline is compared too
    text = dict(claims(run_features(fake_runs({"none": (0.5, 0.3, 0.60), "lpreg": (0.5, 0.35, 0.58),
                                               "entropy": (0.5, 0.3, 0.64), "highent_8020": (0.5, 0.3, 0.50)}))))
    assert by_start("Lp-Reg keeps entropy").startswith("**Partly reproduced.**")
    assert by_start("Lp-Reg is more accurate than the most accurate baseline of this study, `entropy`").startswith(
        "**Contradicted.**")
    assert by_start("Lp-Reg is more accurate than the paper's strongest").startswith("**Reproduced.**")
    two = dict(claims(run_features(fake_runs({"none": (0.5, 0.1, 0.6), "lpreg": (0.5, 0.3, 0.66)}, seeds=(0, 1)))))
    assert next(v for k, v in two.items() if k.startswith("Lp-Reg is more accurate")).startswith("**Not measured**")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The study command, reduced: every arm, 2 seeds, 4 steps (the CI version issue 14 asks for)."""
    base = tmp_path_factory.mktemp("study")
    run_cli(["-m", "experiment=embedded_study", "seed=0,1", "trainer.steps=4", "trainer.prompts_per_step=4",
             "trainer.lr_warmup_steps=2", "eval.every=2", "eval.samples=2", "metrics.samples_every=0",
             f"hydra.sweep.dir={base}/study"], cwd=base, timeout=900)
    return base / "study"


def test_the_study_command_runs_every_arm_and_the_report_is_generated(smoke, tmp_path):
    jobs = sorted(p.name for p in smoke.iterdir() if (p / "summary.json").exists())
    assert sorted(j.split("_", 1)[1] for j in jobs) == sorted(f"{a}_s{s}" for a in ARMS for s in (0, 1))
    large = json.loads((smoke / next(j for j in jobs if "entropy_large" in j) / "summary.json").read_text())
    assert large["arm"] == "entropy_large" and large["regularizer"] == "entropy"
    # last_mean = the mean of the last objective.last_n (3) evaluations after step 0: steps 2 and 4 here
    evals = [r for r in map(json.loads, (smoke / jobs[0] / "metrics.jsonl").read_text().splitlines())
             if "eval/mean" in r and r["step"] > 0]
    first = json.loads((smoke / jobs[0] / "summary.json").read_text())
    assert [r["step"] for r in evals] == [2, 4]
    assert first["last_mean"]["eval/mean"] == pytest.approx(sum(r["eval/mean"] for r in evals) / 2)

    doc = tmp_path / "embedded_study.md"
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "plots.py"), str(smoke), "--report", str(doc)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    for section in ("## Command, machine, time", "## Arms", "## Figures", "## Paired tables",
                    "## The paper's claims, measured"):
        assert section in text
    for a in ARMS:
        assert f"| {a} | 2 |" in text  # one row per arm, 2 seeds
    # 2 seeds: no interval anywhere, in the arm table, the paired tables or the verdicts
    arms_table = text.split("## Arms")[1].split("## Figures")[0]
    assert "(n=2, no CI)" in arms_table and not re.search(r"\d \[-?\d", arms_table)
    paired_rows = [line for line in text.split("## Paired tables")[1].split("## The paper's claims")[0].splitlines()
                   if line.startswith("| ") and not line.startswith("| arm")]
    assert paired_rows and all("no CI" in row and "±" not in row for row in paired_rows)
    assert "**Not measured** (fewer than 3 paired seeds)" in text
    figures = tmp_path / "embedded_study"
    for stem in ("policy_entropy", "eval_mean", "policy_lowprob_mass", "pass_at_k"):
        assert (figures / f"{stem}.png").stat().st_size > 1000
        assert f"](embedded_study/{stem}.png)" in text


def test_the_last_mean_objective_leaves_out_the_step_0_evaluation():
    from types import SimpleNamespace

    from lpreg.harness.summary import objective

    cfg = SimpleNamespace(metric="eval/mean", mode="last_mean", last_n=3)
    evals = [{"step": 0, "eval/mean": 0.1}, {"step": 2, "eval/mean": 0.5}, {"step": 4, "eval/mean": 0.7}]
    assert objective(evals, cfg) == pytest.approx(0.6)  # as summary.json's last_mean; with step 0 it would be 0.433
    assert objective(evals[:1], cfg) == pytest.approx(0.1)  # nothing after step 0: the one evaluation there is
