"""verl's metrics read back into lpreg's run folder under lpreg's names.

verl's file logger (``trainer.logger`` ``file``: ``verl.utils.tracking.FileLogger``) writes one JSON line per step,
``{"step": N, "data": {name: value}}``, to ``$VERL_FILE_LOGGER_PATH`` (``<job>/verl/metrics.jsonl``; that file
stays in the run folder as verl's own record). :func:`translate` turns one line into lpreg's metrics
(``lpreg/core/metrics.py``), which ``lpreg/verl/launch.py`` logs through the run's tracker, so ``metrics.jsonl``,
``timing.jsonl``, W&B, ``summary.json``, the sweeper, the dashboard and ``analysis/plots.py`` see a verl run as they
see a native one.

- lpreg's own values (``_lpreg/<name>/<part>`` and ``_lpreg_rollout/<name>/<part>`` under verl's ``actor/`` prefix,
  written by ``lpreg/verl/extension.py``): ``sum`` as is (a per-rollout count times the updates per step),
  ``total``/``weight`` divided, ``peak`` as is (−inf: none, NaN).
- verl's own names with the same meaning (``VERL_NAMES``): gradient norm, learning rate, rewards (0/1 scores, so
  the mean score is also the accuracy), response lengths, phase times, peak memory.
- Held-out evaluation: ``val-core/<source>/acc/mean@N`` is ``eval/<source>/acc`` and ``eval/<source>/greedy``
  (one greedy sample) or ``eval/<source>/avg@N``; ``eval/mean`` is their mean over sources. verl's ``best@k``
  values are bootstrap estimates, not the unbiased pass@k, and are not mapped.
Everything else stays in verl's file only.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

log = logging.getLogger(__name__)

UPDATE_NS = "_lpreg/"  # metrics of one update, as lpreg/verl/extension.py emits them
ROLLOUT_NS = "_lpreg_rollout/"  # π_old's statistics of the rollout, accumulated over the update

ACTOR = "actor/"  # verl's trainer prefixes the actor's metrics with it
VERL_NAMES = {
    "actor/grad_norm": ("optim/grad_norm",),
    "actor/lr": ("optim/lr",),
    "critic/score/mean": ("train/reward_mean", "train/accuracy"),
    "response_length/mean": ("train/response_len_mean",),
    "response_length/clip_ratio": ("train/response_clip_frac",),
    "timing_s/step": ("timing/step",),
    "timing_s/gen": ("timing/rollout",),
    "timing_s/reward": ("timing/reward",),
    "timing_s/old_log_prob": ("timing/targets",),
    "timing_s/update_actor": ("timing/update",),
    "timing_s/update_weights": ("timing/sync_weights",),
    "timing_s/testing": ("timing/eval",),
    "timing_s/save_checkpoint": ("timing/checkpoint",),
    "perf/max_memory_allocated_gb": ("perf/peak_memory_gb",),
}
EVAL_KEY = re.compile(r"^val-core/(?P<source>[^/]+)/acc/mean@(?P<n>[0-9]+)$")


def _finite(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def lpreg_values(data: dict, updates_per_step: int) -> dict[str, float]:
    """lpreg's own values among a step's verl metrics (module docstring)."""
    parts: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in data.items():
        for ns in (UPDATE_NS, ROLLOUT_NS):
            if key.startswith(ACTOR + ns):
                name, _, part = key[len(ACTOR + ns):].rpartition("/")
                parts.setdefault((ns, name), {})[part] = _finite(value)
    out = {}
    for (ns, name), p in parts.items():
        if "sum" in p:
            out[name] = p["sum"] * (updates_per_step if ns == ROLLOUT_NS else 1)
        elif "total" in p and "weight" in p:
            out[name] = p["total"] / p["weight"] if p["weight"] else math.nan
        elif "peak" in p:
            out[name] = p["peak"] if math.isfinite(p["peak"]) else math.nan
        else:
            raise ValueError(f"verl metric {ACTOR + ns + name!r} came back with parts {sorted(p)}: expected sum, "
                             "total and weight, or peak (lpreg/verl/extension.py)")
    return out


def eval_values(data: dict, protocol: str) -> dict[str, float]:
    """``eval/*`` from verl's validation metrics (module docstring); empty when the step has none."""
    out, accs = {}, []
    for key, value in data.items():
        m = EVAL_KEY.match(key)
        if m:
            source, n, acc = m["source"], int(m["n"]), _finite(value)
            out[f"eval/{source}/acc"] = acc
            out[f"eval/{source}/greedy" if protocol == "greedy" and n == 1 else f"eval/{source}/avg@{n}"] = acc
            accs.append(acc)
    if accs:
        out["eval/mean"] = sum(accs) / len(accs)
    return out


def translate(record: dict, updates_per_step: int, protocol: str) -> tuple[int, dict[str, float], dict[str, float]]:
    """One line of verl's file logger: ``(step, training metrics, evaluation metrics)`` under lpreg's names."""
    step, data = int(record["step"]), record.get("data", {})
    train = {ours: _finite(data[theirs]) for theirs, names in VERL_NAMES.items() if theirs in data for ours in names}
    train |= lpreg_values(data, updates_per_step)
    return step, train, eval_values(data, protocol)


class Follower:
    """Reads the complete lines appended to verl's metrics file since the last call (a torn last line waits)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new_records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in chunk[:end].splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping a line of %s that is not JSON: %r", self.path, line[:200])
        return records
