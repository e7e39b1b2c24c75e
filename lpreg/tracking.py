"""Experiment tracking: a small interface with a local-store backend (always on), W&B, and a null backend.

Local store (the job folder; analysis reads only this):
- ``metrics.jsonl``: one line per step, every deterministic metric (same seed and config -> identical file);
- ``timing.jsonl``: ``timing/*``, ``perf/*`` and the reward grader's cache/timeout counts (wall-clock or process
  dependent);
- ``histograms.jsonl``: fixed-bin histograms (``{"step", "name", "edges", "counts"}``);
- ``samples.jsonl``: tables of sample completions (``{"step", "name", "rows"}``).
Non-finite values are written as ``null``.

W&B (``wandb.mode``: offline by default, online, disabled): one run per job, files inside the job folder,
group = the multirun/study, job_type = regularizer, every series plotted against ``train/step``. The run config and
the recorded command line are masked (``lpreg/redact.py``): a password or API key never reaches W&B.
``run.py`` builds the tracker and owns its lifetime (``finish`` in a ``finally``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lpreg.metrics import is_runtime
from lpreg.redact import masked_argv, redact


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Tracker:
    """Interface: every backend implements these (the base class itself does nothing)."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_histogram(self, name: str, edges: list[float], counts: list[int], step: int) -> None: ...

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...



class LocalStore(Tracker):
    def __init__(self, job_dir: Path, resume_step: int = 0):
        self.dir = Path(job_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step:  # drop lines past the checkpoint we resume from, so no step appears twice
            for name in ("metrics.jsonl", "timing.jsonl", "histograms.jsonl", "samples.jsonl"):
                self._truncate(self.dir / name, resume_step)
        else:
            for name in ("metrics.jsonl", "timing.jsonl", "histograms.jsonl", "samples.jsonl"):
                (self.dir / name).unlink(missing_ok=True)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if path.exists():
            keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def _append(self, name: str, record: dict) -> None:
        with open(self.dir / name, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def log(self, metrics, step):
        timing = {k: _clean(v) for k, v in metrics.items() if is_runtime(k)}
        rest = {k: _clean(v) for k, v in metrics.items() if not is_runtime(k)}
        if rest:
            self._append("metrics.jsonl", {"step": step, **rest})
        if timing:
            self._append("timing.jsonl", {"step": step, **timing})

    def log_histogram(self, name, edges, counts, step):
        self._append("histograms.jsonl", {"step": step, "name": name, "edges": edges, "counts": counts})

    def log_table(self, name, rows, step):
        self._append("samples.jsonl", {"step": step, "name": name, "rows": rows})


class WandbTracker(Tracker):
    def __init__(self, cfg, job_dir: Path, resolved_config: dict, group: str | None, name: str, job_type: str,
                 tags: list[str], run_id: str | None):
        import wandb

        self.wandb = wandb
        with masked_argv():  # W&B records the command line as run metadata
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=group, job_type=job_type, name=name, tags=redact(tags),
                config=redact(resolved_config), dir=str(job_dir), mode=cfg.mode, id=run_id,
                resume="allow" if run_id else None, reinit="create_new",
            )
        self.run_id = self.run.id
        self.run.define_metric("train/step")
        self.run.define_metric("*", step_metric="train/step")

    def log(self, metrics, step):
        self.run.log({**{k: v for k, v in metrics.items() if v is not None}, "train/step": step})

    def log_histogram(self, name, edges, counts, step):
        self.run.log({name: self.wandb.Histogram(np_histogram=(counts, edges)), "train/step": step})

    def log_table(self, name, rows, step):
        if rows:
            cols = list(rows[0])
            table = self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
            self.run.log({name: table, "train/step": step})

    def summary(self, values):
        for k, v in values.items():
            self.run.summary[k] = v

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


class Trackers(Tracker):
    """Fan-out to several backends."""

    def __init__(self, *backends: Tracker):
        self.backends = backends
        self.run_id = next((b.run_id for b in backends if b.run_id), None)

    def log(self, metrics, step):
        for b in self.backends:
            b.log(metrics, step)

    def log_histogram(self, name, edges, counts, step):
        for b in self.backends:
            b.log_histogram(name, edges, counts, step)

    def log_table(self, name, rows, step):
        for b in self.backends:
            b.log_table(name, rows, step)

    def summary(self, values):
        for b in self.backends:
            b.summary(values)

    def finish(self, exit_code=0):
        for b in self.backends:
            b.finish(exit_code)


def wandb_env(experiment_root: Path) -> None:
    """Point W&B's dirs under the experiment root (never the home folder), unless the user set them."""
    for var, sub in (("WANDB_DIR", "."), ("WANDB_DATA_DIR", ".wandb_data"), ("WANDB_CACHE_DIR", ".wandb_cache"),
                     ("WANDB_CONFIG_DIR", ".wandb_config")):
        os.environ.setdefault(var, str((experiment_root / sub).resolve()))


def build_tracker(cfg, job_dir: Path, resolved_config: dict, group: str | None, name: str, job_type: str,
                  tags: list[str], run_id: str | None, resume_step: int) -> Tracker:
    local = LocalStore(job_dir, resume_step)
    if cfg.mode == "disabled":
        return Trackers(local)
    if cfg.mode not in ("offline", "online"):
        raise ValueError(f"wandb.mode={cfg.mode!r} must be one of: offline, online, disabled")
    return Trackers(local, WandbTracker(cfg, job_dir, resolved_config, group, name, job_type, tags, run_id))
