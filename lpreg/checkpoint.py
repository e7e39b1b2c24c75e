"""Checkpoints in the job folder: ``checkpoints/step_000100/`` holds the model and tokenizer
(``save_pretrained``) and ``trainer_state.pt`` (optimizer, RNG states, prompt sampler, step, W&B run id).
Each is written to a temporary folder and renamed, so a crash never leaves a half-written checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

STATE = "trainer_state.pt"


def save(job_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    root = job_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(job_dir: Path) -> Path | None:
    done = sorted(p for p in (job_dir / "checkpoints").glob("step_*") if (p / STATE).exists())
    return done[-1] if done else None


def load_state(path: Path) -> dict:
    return torch.load(path / STATE, weights_only=False)


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues: the checkpoint folder and its trainer state."""

    path: Path
    state: dict


def find_resume(job_dir: Path) -> Resume | None:
    """The latest checkpoint of ``job_dir`` with its state, or None when the folder has none."""
    path = latest(job_dir)
    return Resume(path, load_state(path)) if path is not None else None
