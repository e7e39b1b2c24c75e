"""Checkpoints in the job folder, read without pickle.

Layout: ``checkpoints/step_000100/`` holds the model and tokenizer (``save_pretrained``: weights in
``model.safetensors``, config and tokenizer as JSON) and ``trainer_state.pt`` (optimizer, RNG states, prompt sampler,
step, evaluations, W&B run id, the resolved config with secrets masked). A checkpoint is written to
``checkpoints/.tmp_step_*``, flushed to disk (fsync), verified (:func:`verify`) and only then renamed into place
(:func:`write`, then :func:`commit`); the older ones are deleted after that, down to ``trainer.keep_checkpoints``.
So a crash or a full disk never leaves a half-written ``step_*`` folder and never removes the last good one, and
:func:`find_resume` takes the newest checkpoint that verifies, skipping (with a warning) any that does not.
Resume checks the config against the checkpoint's (:func:`check_resume_config`).

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

import dataclasses
import json
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpreg.runfolder import fsync_path

log = logging.getLogger(__name__)
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
                        "pickle to load: convert it to tensors, numbers, strings, lists or dicts "
                        "(lpreg/native/checkpoint.py)")


def write(job_dir: Path, step: int, model, tokenizer, state: dict) -> Path:
    """Write a complete checkpoint into ``checkpoints/.tmp_step_<step>/``, flushed to disk and verified
    (:func:`verify`); nothing that :func:`latest` sees changes until :func:`commit` renames it into place."""
    state = {**state, "format": FORMAT}
    check_plain(state)
    tmp = job_dir / "checkpoints" / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)  # safetensors (the only format transformers 5 writes)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE)
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    verify(tmp)
    return tmp


def commit(tmp: Path, keep: int = 2) -> Path:
    """Rename the written checkpoint ``tmp`` (from :func:`write`) to ``step_<step>``, then delete all but the newest
    ``keep`` checkpoints: the previous ones stay until the new one is complete, verified and in place."""
    root = tmp.parent
    final = root / tmp.name.removeprefix(".tmp_")
    shutil.rmtree(final, ignore_errors=True)  # only a damaged one of the same step (see find_resume)
    tmp.rename(final)
    fsync_path(root)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save(job_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>/`` (model, tokenizer, trainer state) and keep the newest ``keep`` of them."""
    return commit(write(job_dir, step, model, tokenizer, state), keep)


def _check_safetensors(file: Path) -> None:
    """Raise ``ValueError`` if ``file``'s size disagrees with its header (8-byte length, JSON, data): a truncated
    or cut weight file, detected without reading the weights."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{file}: truncated safetensors header ({size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as err:
            raise ValueError(f"{file}: unreadable safetensors header ({err})") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{file}: {size} bytes, but its header describes {8 + n + end} (truncated?)")


def verify(path: Path) -> None:
    """Raise ``ValueError`` (or :class:`UnsafeCheckpointError`) unless checkpoint folder ``path`` is complete: its
    weights are safetensors whose sizes match their headers and its trainer state loads (memory-mapped, without
    reading the tensors)."""
    path = Path(path)
    check_weights(path)
    for f in sorted(path.glob("*.safetensors")):
        _check_safetensors(f)
    if not (path / STATE).is_file():
        raise ValueError(f"{path / STATE} is missing")
    try:
        torch.load(path / STATE, weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path / STATE} does not load: {err}") from None


def latest(job_dir: Path) -> Path | None:
    """The newest committed checkpoint folder of ``job_dir`` (not verified: see :func:`find_resume`)."""
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
    from lpreg.native.models import load_pretrained

    check_weights(path)
    return load_pretrained(path, trust_remote_code=False, use_safetensors=True)


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues: the checkpoint folder and its trainer state."""

    path: Path
    state: dict


def find_resume(job_dir: Path) -> Resume | None:
    """The newest checkpoint of ``job_dir`` that verifies and loads, with its state; None when there is none.

    A newer checkpoint that fails (truncated weights or state, a half-written folder) is skipped with a warning
    naming it and the reason, and renamed ``damaged_step_*`` (kept for inspection, out of the way of pruning): the
    run continues from the one before and writes that step again.
    Unfinished ``.tmp_step_*`` folders (a process killed while writing) are removed.
    """
    root = Path(job_dir) / "checkpoints"
    for tmp in sorted(root.glob(".tmp_step_*")):
        log.warning("removing %s: a checkpoint whose writing was interrupted", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(root.glob("step_*"), reverse=True):
        try:
            verify(path)
            return Resume(path, load_state(path))
        except (ValueError, OSError) as err:  # UnsafeCheckpointError is a ValueError
            if isinstance(err, UnsafeCheckpointError) and "pickle" in str(err):
                raise  # a foreign checkpoint is refused, not skipped (lpreg/native/checkpoint.py docstring)
            aside = path.with_name(f"damaged_{path.name}")
            log.warning("skipping checkpoint %s: %s; moved to %s (delete it when done), trying the previous one",
                        path, err, aside.name)
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
    return None


# ---- the config a checkpoint was written with ------------------------------------------------------------------

# Keys that may change between a checkpoint and its resume (they do not change what the run computes, or say how
# long it runs): a prefix ending in "." covers a whole section.
MUTABLE_KEYS = ("trainer.steps", "trainer.resume", "trainer.resume_force", "trainer.num_threads",
                "trainer.keep_checkpoints", "trainer.checkpoint_every", "eval.", "wandb.", "sweep.", "objective.")


def config_record(cfg) -> dict:
    """The resolved config (a dataclass) as stored in the checkpoint: plain values, secrets masked."""
    from lpreg.redact import redact

    return redact(json.loads(json.dumps(dataclasses.asdict(cfg), default=str)))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flatten(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every key (outside :data:`MUTABLE_KEYS`) whose value differs."""
    a, b = _flatten(saved), _flatten(current)
    mutable = lambda k: any(k == m or (m.endswith(".") and k.startswith(m)) for m in MUTABLE_KEYS)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(a.keys() | b.keys()) if not mutable(k) and a.get(k) != b.get(k)]


class ConfigMismatchError(ValueError):
    """A resume whose config differs from the checkpoint's."""


def check_resume_config(resume: Resume, cfg, force: bool) -> None:
    """Refuse to resume ``resume`` with a config that differs from the one it was written with (the message lists
    the keys); with ``force`` only warn. A checkpoint from before configs were stored is warned about."""
    saved = resume.state.get("config")
    if saved is None:
        log.warning("%s holds no config (written by an older lpreg): the resumed config is not checked", resume.path)
        return
    diff = config_differences(saved, config_record(cfg))
    if not diff:
        return
    msg = (f"the config differs from the one checkpoint {resume.path} was written with:\n  " + "\n  ".join(diff))
    if force:
        log.warning("%s\nresuming anyway (trainer.resume_force=true)", msg)
        return
    raise ConfigMismatchError(f"{msg}\nResume with the same values, start a new run folder, or set "
                              "trainer.resume_force=true to resume with the new values")
