"""One writer per run folder, and which process a run folder's ``summary.json`` belongs to.

``run.lock`` in the job folder holds ``{"pid", "host", "start"}`` of the process that writes the folder (``start``:
the process's start time in clock ticks since boot, from ``/proc/<pid>/stat``, so that a recycled pid is not taken for
the holder). It is checked and taken under ``flock`` (:func:`acquire`): a second ``lpreg.run`` in the same folder
exits with :class:`RunFolderBusy` naming the holder. A lock whose process is gone (same host, pid dead or started at
another time) is taken over with a warning; a lock from another host is never taken over (its process cannot be
checked from here: delete ``run.lock`` by hand once that run is over).

Hydra writes ``<job>/.hydra/`` before any lpreg code runs, so a second run refused here has already rewritten the
folder's ``.hydra/*.yaml`` (the values of the second command line); every file lpreg writes is protected.

``summary.json`` carries the same ``pid``/``host``/``start``; :func:`process_gone` tells whether a ``running``
summary's process has ended without writing a final status (then it ``crashed``: ``lpreg/harness/callbacks.py``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)
LOCK = "run.lock"


class RunFolderBusy(RuntimeError):
    """Another live process writes this run folder."""


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk: what a run folder's writers call before a rename or a
    checkpoint commit relies on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def arm(summary: dict) -> str:
    """The arm a run belongs to in tables and figures: its ``arm`` (set by ``arm=<name>``, lpreg/conf/arm/) or, for runs
    without one, its regularizer's name."""
    return str(summary.get("arm") or summary.get("regularizer"))


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot, field 22 of /proc/<pid>/stat); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "comm)": state is field 3, starttime field 22


def identity() -> dict:
    """``{"pid", "host", "start"}`` of this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid())}


def process_gone(owner: dict) -> bool:
    """Whether the process described by ``owner`` (from :func:`identity`) has certainly ended: it ran on this host
    and its pid is free or now belongs to a process started at another time. False when it cannot be told."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    start = process_start(owner["pid"])
    return owner.get("start") is not None and start is not None and start != owner["start"]


def acquire(job_dir: Path) -> Path:
    """Take ``job_dir/run.lock`` for this process (module docstring); returns its path.

    The check-and-take runs under ``flock`` on the folder, so two processes of this host that find the
    same stale lock cannot both take it over (a lock is only ever taken over on its own host)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / LOCK
    guard = os.open(job_dir, os.O_RDONLY)  # flock on the folder itself: no extra file
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            holder = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            holder = None
        except (OSError, ValueError):
            holder = {}  # unreadable: written by a process killed while writing it
        if holder and not process_gone(holder):
            raise RunFolderBusy(
                f"run folder {job_dir} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
                f"({path}): one run writes a folder at a time. Wait for it, use another folder "
                f"(hydra.run.dir=...), or delete {path} if that process is gone")
        if holder is not None:
            log.warning("taking over %s from pid %s on host %s, which is gone (a run that crashed)", path,
                        holder.get("pid"), holder.get("host"))
        tmp = path.with_name(f"{LOCK}.{os.getpid()}")
        tmp.write_text(json.dumps(identity()))
        tmp.replace(path)
    finally:
        os.close(guard)  # releases the flock
    return path


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
