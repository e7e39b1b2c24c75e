"""Experiment tracking: a small interface with a local-store backend (always on), W&B, and a null backend.

Local store (the job folder; analysis reads only this):
- ``metrics.jsonl``: one line per step, every deterministic metric (same seed and config -> identical file);
- ``timing.jsonl``: ``timing/*``, ``perf/*`` and the reward grader's cache/timeout counts (wall-clock or process
  dependent);
- ``histograms.jsonl``: fixed-bin histograms (``{"step", "name", "edges", "counts"}``);
- ``samples.jsonl``: tables of sample completions (``{"step", "name", "rows"}``).
Non-finite values are written as ``null``.

W&B (``wandb.mode``: offline by default, online, disabled): one run per job, files inside the job folder,
group = the multirun/study, job_type = the arm (the regularizer unless ``arm=`` names it), every series plotted
against ``train/step``. The run config and the recorded command line are masked (``lpreg/redact.py``): a password
or API key never reaches W&B.
``run.py`` builds the tracker and owns its lifetime (``finish`` in a ``finally``).

The local store is the record of truth; W&B is a mirror (:class:`Mirror`): a W&B error at any point (init, log,
summary, finish) is logged once and the run continues without it, ``summary.json`` saying ``wandb: failed``. A resumed
run logs to W&B only the steps after its checkpoint, at W&B step = training step, so W&B drops steps it already has;
steps W&B lost in a crash before the checkpoint stay missing there (``metrics.jsonl`` has them).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpreg.core.metrics import is_runtime
from lpreg.redact import masked_argv, redact
from lpreg.runfolder import fsync_path

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")  # wandb.mode


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

    def sync(self) -> None:
        """Make everything logged so far durable (the local store fsyncs its files; mirrors do nothing)."""

    def failed_mirrors(self) -> dict[str, str]:
        """``{name: error}`` of the mirrors (W&B) that failed and were dropped (:class:`Mirror`)."""
        return {}


class LocalStore(Tracker):
    """The record of truth: JSONL files in the job folder (module docstring).

    On resume (``resume_step`` > 0) every file is cut back to the lines of steps <= ``resume_step`` (the checkpoint
    the run continues from): the trainer writes a step's lines before it commits that step's checkpoint, so these
    are exactly the lines of the steps the checkpoint has seen. A torn last line (a kill or a full disk in the middle
    of a write) is dropped with a warning naming the file; an unreadable line elsewhere is an error naming it.
    """

    FILES = ("metrics.jsonl", "timing.jsonl", "histograms.jsonl", "samples.jsonl")

    def __init__(self, job_dir: Path, resume_step: int = 0):
        self.dir = Path(job_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step:  # drop lines past the checkpoint we resume from, so no step appears twice
            for name in self.FILES:
                self._truncate(self.dir / name, resume_step)
        else:
            for name in self.FILES:
                (self.dir / name).unlink(missing_ok=True)

    @staticmethod
    def read_lines(path: Path) -> list[tuple[str, dict]]:
        """``(line, record)`` of every complete line of ``path``; a torn last line is dropped with a warning."""
        text = path.read_text()
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends with a newline, else the unterminated last line
        out = []
        for i, ln in enumerate(lines):
            try:
                out.append((ln, json.loads(ln)))
            except ValueError:
                if i == len(lines) - 1 and not torn:  # a terminated but cut last line (a disk-full write)
                    torn = ln
                    break
                raise ValueError(f"{path}:{i + 1}: unreadable line (not JSON): {ln[:80]!r}; the file is damaged, "
                                 "fix or remove that line to resume") from None
        if torn:
            log.warning("%s: ignoring its torn last line (%d bytes, an interrupted write): %r", path, len(torn),
                        torn[:80])
        return out

    @classmethod
    def _truncate(cls, path: Path, step: int) -> None:
        if path.exists():
            keep = [ln for ln, rec in cls.read_lines(path) if rec["step"] <= step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            tmp.replace(path)

    def _append(self, name: str, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.dir / name, "a") as fh:
            fh.write(line)

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

    def sync(self) -> None:
        """Flush every file to disk (fsync): called before a checkpoint is committed."""
        for name in self.FILES:
            if (self.dir / name).exists():
                fsync_path(self.dir / name)


class WandbTracker(Tracker):
    def __init__(self, cfg, job_dir: Path, resolved_config: dict, group: str | None, name: str, job_type: str,
                 tags: list[str], run_id: str | None, resume_step: int = 0):
        import wandb

        self.wandb = wandb
        with masked_argv():  # W&B records the command line as run metadata
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=group, job_type=job_type, name=name, tags=redact(tags),
                config=redact(resolved_config), dir=str(job_dir), mode=cfg.mode, id=run_id,
                resume="allow" if run_id else None, reinit="create_new",
            )
        self.run_id = self.run.id
        self.resume_step = resume_step
        self.run.define_metric("train/step")
        self.run.define_metric("*", step_metric="train/step")

    def _log(self, data: dict, step: int) -> None:
        """Log at W&B step ``step``: a resumed run logs only steps after its checkpoint, and W&B itself drops a
        step lower than the run's last synced one (logged before a crash, after the checkpoint): no duplicates."""
        if step > self.resume_step or (step == 0 and not self.resume_step):
            self.run.log({**data, "train/step": step}, step=step)

    def log(self, metrics, step):
        self._log({k: v for k, v in metrics.items() if v is not None}, step)

    def log_histogram(self, name, edges, counts, step):
        self._log({name: self.wandb.Histogram(np_histogram=(counts, edges))}, step)

    def log_table(self, name, rows, step):
        if rows:
            cols = list(rows[0])
            self._log({name: self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])}, step)

    def summary(self, values):
        for k, v in values.items():
            self.run.summary[k] = v

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


class Mirror(Tracker):
    """A backend that must never stop training (W&B): its first error, at any call (construction included), is
    logged once with what to expect, and the backend is dropped; the run goes on with the local store, the record of
    truth, and ``summary.json`` says ``wandb: failed`` (``run.py`` reads :attr:`error`)."""

    def __init__(self, name: str, make: Callable[[], Tracker]):
        self.name, self.backend, self.error = name, None, None
        self.backend = self._guard("init", make)
        self.run_id = self.backend.run_id if self.backend is not None else None

    def _guard(self, what: str, fn: Callable, *args) -> Any:
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # a mirror's failure of any kind (network, disk, W&B) must not stop the run
            self.error, self.backend = f"{what}: {type(err).__name__}: {err}", None
            log.error("%s failed at %s (%s: %s); the run continues with the local store only (the record of "
                      "truth), and summary.json records %s: failed", self.name, what, type(err).__name__, err,
                      self.name)
            return None

    def _call(self, what: str, method: str, *args) -> None:
        """The backend's ``method`` under :meth:`_guard`; nothing once the backend is dropped."""
        if self.backend is not None:
            self._guard(what, getattr(self.backend, method), *args)

    def log(self, metrics, step):
        self._call("log", "log", metrics, step)

    def log_histogram(self, name, edges, counts, step):
        self._call("log", "log_histogram", name, edges, counts, step)

    def log_table(self, name, rows, step):
        self._call("log", "log_table", name, rows, step)

    def summary(self, values):
        self._call("summary", "summary", values)

    def finish(self, exit_code=0):
        self._call("finish", "finish", exit_code)


class Trackers(Tracker):
    """Fan-out to several backends."""

    def __init__(self, *backends: Tracker):
        self.backends = backends
        self.run_id = next((b.run_id for b in backends if b.run_id), None)

    def failed_mirrors(self) -> dict[str, str]:
        return {b.name: b.error for b in self.backends if isinstance(b, Mirror) and b.error is not None}

    def sync(self):
        for b in self.backends:
            b.sync()

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
    return Trackers(local, Mirror("wandb", lambda: WandbTracker(cfg, job_dir, resolved_config, group, name,
                                                                 job_type, tags, run_id, resume_step)))
