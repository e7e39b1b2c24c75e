"""A test-only crash hook: ``LPREG_TEST_KILL_AT="<step>:<phase>"`` kills the process with SIGKILL at that point.

Used by ``tests/test_reliability.py`` to kill a run where a real crash (``kill -9``, the out-of-memory killer, a
node failure) could stop it, then check that a resume gives the uninterrupted run's files. Unset, every call is a
dictionary lookup. Phases (``lpreg/trainer.py`` and ``lpreg/tracking.py`` call :func:`kill_point`):
``rollout`` (start of a step), ``update`` (after the optimizer steps, nothing of the step written),
``checkpoint_written`` (the step's lines on disk, its checkpoint written but not committed), ``committed`` (just
after the checkpoint's rename), ``between_metrics_timing`` (metrics line written, timing line not), and
``torn_<file stem>`` (half of that file's line written, e.g. ``torn_metrics``).
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "LPREG_TEST_KILL_AT"


def kill_requested(step: int, phase: str) -> bool:
    return os.environ.get(KILL_ENV) == f"{step}:{phase}"


def kill_point(step: int, phase: str) -> None:
    """SIGKILL this process if ``LPREG_TEST_KILL_AT`` names ``step`` and ``phase``."""
    if kill_requested(step, phase):
        os.kill(os.getpid(), signal.SIGKILL)
