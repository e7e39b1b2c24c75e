"""Checkpoints in the job folder, read without pickle.

Layout: ``checkpoints/step_000100/`` holds the model and tokenizer (``save_pretrained``: weights in
``model.safetensors``, config and tokenizer as JSON) and ``trainer_state.pt`` (optimizer, RNG states, prompt sampler,
step, evaluations, W&B run id). Each is written to a temporary folder and renamed, so a crash never leaves a
half-written checkpoint.

A checkpoint folder may come from someone else (a shared file system, a download), and unpickling a file runs
whatever code it names. So nothing here unpickles:
- ``trainer_state.pt`` is read with ``torch.load(weights_only=True)``, whose unpickler builds only tensors, numbers,
  strings, ``None``, and lists, tuples and dicts of them; a file that needs more is refused with
  :class:`UnsafeCheckpointError` naming it. :func:`save` first checks that the state holds only such values
  (:func:`check_plain`), so a checkpoint that cannot be read back this way is never written.
- Python's ``random.Random`` state (the prompt sampler's) is stored as a dict of plain ints
  (:func:`random_state_to_plain`) and turned back by :func:`random_state_from_plain`.
- Model weights are read from safetensors only: a checkpoint folder holding a pickle-based weight file
  (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``) or no ``*.safetensors`` is refused
  (:func:`check_weights`), and :func:`load_model` passes ``use_safetensors=True`` (``trust_remote_code`` stays off).

Checkpoints written before this format (no ``format`` key, the sampler's random state as a tuple) are migrated on
load, not refused: they hold only tensors and plain containers, which the restricted unpickler reads (checked with
torch 2.13), :func:`random_state_from_plain` accepts the tuple, and their weights were always ``model.safetensors``.
A checkpoint with a newer ``format`` than :data:`FORMAT` is refused.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

STATE = "trainer_state.pt"
FORMAT = 2  # 1: before pickle-free loading (random state as a tuple); 2: random state as a dict of plain ints
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
_LEAVES = (torch.Tensor, bool, int, float, str, type(None))


class UnsafeCheckpointError(ValueError):
    """A checkpoint file or folder that would need pickle (or non-safetensors weights) to load."""


def random_state_to_plain(state: tuple) -> dict:
    """``random.Random.getstate()`` (``(version, 625 ints, gauss_next)``) as a dict of plain values."""
    version, internal, gauss_next = state
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def random_state_from_plain(plain: dict | tuple | list) -> tuple:
    """The tuple ``random.Random.setstate`` takes, from :func:`random_state_to_plain`'s dict or (format 1) the tuple."""
    if isinstance(plain, dict):
        return plain["version"], tuple(plain["internal"]), plain["gauss_next"]
    if isinstance(plain, (tuple, list)) and len(plain) == 3:
        return plain[0], tuple(plain[1]), plain[2]
    raise TypeError(f"a random state must be a dict from random_state_to_plain or a 3-tuple, not {type(plain)}")


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value that ``torch.load(weights_only=True)`` could not rebuild.

    Allowed: tensors, bool, int, float, str, None, and lists, tuples and dicts (str or int keys) of them."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _LEAVES):
        raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__name__}, which would need "
                        "pickle to load: convert it to tensors, numbers, strings, lists or dicts (lpreg/checkpoint.py)")


def save(job_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>/`` (model, tokenizer, trainer state) and keep the newest ``keep`` of them."""
    state = {**state, "format": FORMAT}
    check_plain(state)
    root = job_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)  # safetensors (the only format transformers 5 writes)
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
    """The trainer state of checkpoint folder ``path``, read without pickle (module docstring)."""
    file = Path(path) / STATE
    try:
        state = torch.load(file, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{file} holds objects that only pickle can load, and unpickling runs code named by the file: refused. "
            "Resume only from checkpoints lpreg wrote, or start the run afresh (trainer.resume=false or another "
            f"job folder). Loader: {str(err).splitlines()[-1] if str(err) else type(err).__name__}") from err
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"{file} holds a {type(state).__name__}, not a trainer state dict")
    if state.get("format", 1) > FORMAT:
        raise UnsafeCheckpointError(f"{file} has checkpoint format {state['format']}; this lpreg reads formats "
                                    f"1 to {FORMAT}: update lpreg to resume from it")
    return state


def check_weights(path: Path) -> None:
    """Refuse a checkpoint folder whose weights are not safetensors-only (module docstring)."""
    path = Path(path)
    pickled = sorted({p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern)} - {STATE})
    if pickled:
        raise UnsafeCheckpointError(
            f"{path / pickled[0]}: checkpoint weights must be safetensors; {', '.join(pickled)} would be unpickled "
            f"when loaded. Refused: delete the file if {path / 'model.safetensors'} holds the model, or re-save the "
            "model with save_pretrained")
    if not any(path.glob("*.safetensors")):
        raise UnsafeCheckpointError(f"{path} holds no model.safetensors: not a checkpoint lpreg wrote")


def load_model(path: Path):
    """``(model, tokenizer)`` of checkpoint folder ``path``: safetensors weights only, no remote code."""
    from lpreg.models import load_pretrained

    check_weights(path)
    return load_pretrained(path, trust_remote_code=False, use_safetensors=True)


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues: the checkpoint folder and its trainer state."""

    path: Path
    state: dict


def find_resume(job_dir: Path) -> Resume | None:
    """The latest checkpoint of ``job_dir`` with its state, or None when the folder has none."""
    path = latest(job_dir)
    return Resume(path, load_state(path)) if path is not None else None
