"""Hydra callbacks: secrets masked in what Hydra writes, and a table of arms × seeds at the end of a multirun.

``MaskSecrets`` (``lpreg/redact.py`` has the rules): Hydra saves ``<job>/.hydra/{config,hydra,overrides}.yaml`` and
a basic multirun's ``multirun.yaml`` before any user code runs, with every value in clear. ``on_job_start`` (called
by Hydra right after it saved them, before the task function) rewrites those files masked; it and
``on_multirun_start`` mask every log record of the process (the job log file, the launcher's lines, the console),
and ``on_multirun_end`` masks ``multirun.yaml`` once more. Between Hydra's write of ``multirun.yaml`` and the first job's
start (the time to compose one job's config) that file holds the values in clear.

``MultirunSummary`` reads every ``<job>/summary.json`` under the multirun folder and writes ``multirun_summary.csv`` and
``multirun_summary.md`` (final and best held-out ``eval/mean``, final entropy, status, wall time), prints the
Markdown table, and makes the multirun exit non-zero if any job failed (after all jobs ran).

A job stopped from outside (SLURM's ``scancel``, a time limit, the out-of-memory killer) leaves a job folder with no
``summary.json`` or with one that still says ``running``; at the end of a plain multirun such a job is ``failed``.
(In a sweep other workers may share the folder, so ``running`` stays as it is there; the study records the trial.)
When the launcher raises instead of returning (submitit raises for a job that SLURM killed), Hydra skips
``on_multirun_end`` and exits with status 1; the summary is then written at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lpreg.mdtable import md_table
from lpreg.redact import mask_log_records, redact, rewrite_masked_yaml
from lpreg.runfolder import arm

log = logging.getLogger("lpreg")
COLUMNS = ["job", "regularizer", "seed", "status", "final_acc", "best_acc", "final_entropy", "wall_time_s"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a multirun: those Hydra wrote ``.hydra/`` into, or that hold a summary.json."""
    return sorted(p for p in Path(sweep_dir).iterdir()
                  if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").is_file()))


def collect(sweep_dir: Path, ended: bool = True) -> list[dict[str, Any]]:
    """One row per job folder, sorted by regularizer, seed and folder.

    A folder without summary.json is ``failed``; a ``running`` summary whose process is gone (``lpreg/runfolder.py``)
    is ``crashed``; any other ``running`` one is ``failed`` when ``ended`` (all jobs were over).
    """
    from lpreg.runfolder import process_gone

    rows = []
    for job in job_dirs(sweep_dir):
        path = job / "summary.json"
        s = json.loads(path.read_text()) if path.is_file() else {"status": "failed"}
        if s.get("status") == "running" and process_gone(s):
            s["status"] = "crashed"
        elif ended and s.get("status") == "running":
            s["status"] = "failed"
        rows.append(redact({
            "job": job.name, "regularizer": arm(s) if s.get("regularizer") else None, "seed": s.get("seed"),
            "status": s.get("status"), "final_acc": s.get("final", {}).get("eval/mean"),
            "best_acc": s.get("best", {}).get("eval/mean"),
            "final_entropy": s.get("last_train", {}).get("policy/entropy"), "wall_time_s": s.get("wall_time_s"),
        }))
    return sorted(rows, key=lambda r: (str(r["regularizer"]), r["seed"] if r["seed"] is not None else -1, r["job"]))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown; job names and fields come from files and are escaped (``lpreg.mdtable``)."""
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else v
    return md_table(COLUMNS, [[fmt(r[c]) for c in COLUMNS] for r in rows])


def write_summary(sweep_dir: Path, ended: bool = True) -> list[dict[str, Any]]:
    import csv

    rows = collect(sweep_dir, ended)
    with open(Path(sweep_dir) / "multirun_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (Path(sweep_dir) / "multirun_summary.md").write_text(markdown(rows))
    return rows


class MaskSecrets(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_log_records()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_log_records()
        if config.hydra.output_subdir is not None:
            saved = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                if (saved / name).exists():
                    rewrite_masked_yaml(saved / name)
        self._mask_multirun_yaml(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._mask_multirun_yaml(config)

    @staticmethod
    def _mask_multirun_yaml(config: DictConfig) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if path.exists():
            rewrite_masked_yaml(path)


def report(sweep_dir: Path, in_sweep: bool) -> list[str]:
    """Write and print the summary; return the jobs that did not complete."""
    rows = write_summary(sweep_dir, ended=not in_sweep)
    print(f"\nmultirun summary ({sweep_dir}/multirun_summary.md):\n" + markdown(rows), flush=True)
    failed = [r["job"] for r in rows if r["status"] not in ("completed", "pruned")]
    if failed and not in_sweep:  # in a sweep, failed trials are recorded by the study
        print(f"error: {len(failed)} of {len(rows)} jobs did not complete: {', '.join(failed)} "
              f"(see their summary.json and log under {sweep_dir})", file=sys.stderr, flush=True)
    return failed


class MultirunSummary(Callback):
    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.in_sweep = False
        self.ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolved now: ${now:...} in hydra.sweep.dir must not be evaluated again at exit.
        self.sweep_dir, self.in_sweep = Path(config.hydra.sweep.dir), config.get("sweep") is not None
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        """The launcher raised (Hydra already exits with status 1): summarize what the job folders show."""
        if not self.ended and self.sweep_dir is not None and self.sweep_dir.is_dir():
            print("the launcher stopped with an error (above); summarizing the job folders", file=sys.stderr)
            report(self.sweep_dir, self.in_sweep)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.ended = True
        if report(Path(config.hydra.sweep.dir), config.get("sweep") is not None) and config.get("sweep") is None:
            # Hydra turns exceptions raised in callbacks into warnings, so exit explicitly.
            raise SystemExit(1)
