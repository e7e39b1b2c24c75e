"""Loading runs into one tidy DataFrame with columns ``run, regularizer, seed, step, metric, value``.

The ``regularizer`` column holds the run's arm (``lpreg.runfolder.arm``): the regularizer's name, or the ``arm`` label
of runs that set one (two arms of one regularizer, e.g. two entropy coefficients).

A run is a Hydra job folder holding ``summary.json`` and ``metrics.jsonl`` (the local store, see
``lpreg/harness/tracking.py``). Folders may be job folders, multirun folders, or any parent of them. Runs that failed, or
that have no metrics, are reported (``Runs.skipped``) and left out; they are never fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lpreg.runfolder import arm

COLUMNS = ["run", "regularizer", "seed", "step", "metric", "value"]


@dataclass
class Runs:
    metrics: pd.DataFrame  # tidy: run, regularizer, seed, step, metric, value
    summaries: dict[str, dict]  # run -> summary.json of completed runs
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def job_folders(paths) -> list[Path]:
    """Every folder under ``paths`` (inclusive) that holds a summary.json."""
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: pass multirun or job folders written by lpreg.run")
        found += [s.parent for s in ([p / "summary.json"] if (p / "summary.json").exists() else
                                     sorted(p.rglob("summary.json")))]
    return sorted(set(found))


def _rows(path: Path, run: str, reg: str, seed: int) -> list[tuple]:
    rows = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        step = rec.pop("step")
        rows += [(run, reg, seed, step, k, float(v)) for k, v in rec.items()
                 if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
    return rows


def load_runs(paths) -> Runs:
    """Tidy metrics and summaries of every completed run under ``paths``."""
    rows, summaries, skipped = [], {}, []
    for job in job_folders(paths):
        summary = json.loads((job / "summary.json").read_text())
        status = summary.get("status")
        if status != "completed":
            skipped.append(f"{job}: status {status}" + (f" ({summary['error']})" if "error" in summary else ""))
            continue
        if not (job / "metrics.jsonl").exists():
            skipped.append(f"{job}: no metrics.jsonl")
            continue
        run = str(job)
        summaries[run] = summary
        rows += _rows(job / "metrics.jsonl", run, arm(summary), int(summary["seed"]))
        if (job / "timing.jsonl").exists():
            rows += _rows(job / "timing.jsonl", run, arm(summary), int(summary["seed"]))
    return Runs(pd.DataFrame(rows, columns=COLUMNS), summaries, skipped)


def load_histograms(runs: Runs, name: str | None = "policy/sampled_prob_hist") -> pd.DataFrame:
    """Per-step histograms: columns ``run, regularizer, seed, step, name, edges, counts``; only those named ``name``
    (None: all of them)."""
    rows = []
    for run, s in runs.summaries.items():
        path = Path(run) / "histograms.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if name is None or rec["name"] == name:
                    rows.append((run, arm(s), int(s["seed"]), rec["step"], rec["name"], rec["edges"], rec["counts"]))
    return pd.DataFrame(rows, columns=["run", "regularizer", "seed", "step", "name", "edges", "counts"])


def load_wandb(path: str, group: str | None = None, api=None) -> Runs:
    """The same from W&B (``ENTITY/PROJECT``, optionally one group): history and summaries of finished runs.

    ``api`` defaults to ``wandb.Api()`` (needs network and a key); tests pass a stand-in.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    rows, summaries, skipped = [], {}, []
    for r in api.runs(path, filters={"group": group} if group else None):
        if r.state != "finished":
            skipped.append(f"{r.name}: W&B state {r.state}")
            continue
        reg = r.config.get("arm") or r.config.get("regularizer", {}).get("name")
        seed = int(r.config.get("seed", 0))
        run = f"wandb:{r.id}"
        for rec in r.scan_history():
            step = rec.get("train/step")
            if step is None:
                continue
            rows += [(run, reg, seed, int(step), k, float(v)) for k, v in rec.items()
                     if k != "train/step" and not k.startswith("_") and isinstance(v, (int, float))
                     and not (isinstance(v, float) and math.isnan(v))]
        s = dict(r.summary)
        summaries[run] = {"regularizer": reg, "seed": seed, "status": "completed",
                          "final": {k[6:]: v for k, v in s.items() if k.startswith("final/eval/")},
                          "best": {k[5:]: v for k, v in s.items() if k.startswith("best/eval/")}}
    return Runs(pd.DataFrame(rows, columns=COLUMNS), summaries, skipped)
