"""Declared values of config fields, checked once when the typed config is built.

A numeric field states its allowed range next to its default, and a string option its closed set of choices, in the
dataclass (``lpreg/harness/config.py``, the task and engine schemas, the regularizer schemas in
``lpreg/core/losses/*``)::

    steps: int = ranged(400, AT_LEAST_1)
    rho: float = embedded(0.05, "0.01 (Qwen3-14B)", Range(0, 1, lo_open=True))
    scope: str = choice("micro_batch", SCOPES)

``check_fields(cfg)`` walks the whole config (nested dataclasses, lists of numbers) and raises
:class:`ConfigValueError` naming the key, the value and the range or the valid choices. ``Config.__post_init__``
calls it, so ``OmegaConf.to_object`` (what ``run.py`` does first) refuses a bad value before any work is done. Every
bound also refuses NaN and ±inf; ``None`` passes (it means "unset / automatic" wherever a field allows it).

``embedded`` marks a default sized for the embedded CPU testbed, with what the paper's real-model runs use: a run with a
real model that leaves one of them at its default is warned with the list (``lpreg/harness/config.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class ConfigValueError(ValueError):
    """A config value outside its declared range; the message names the key, the value and the range."""


@dataclass(frozen=True)
class Range:
    """An interval ``[lo, hi]``; ``lo_open``/``hi_open`` exclude the bound; ``None`` = unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}" if self.lo is not None else "finite"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, lo_open=True)  # a share that must select something: (0, 1]
OPEN_UNIT = Range(0, 1, lo_open=True, hi_open=True)


def ranged(default: Any, allowed: Range, **metadata) -> Any:
    """A dataclass field with ``default`` whose value must lie in ``allowed`` (each list element, for a list)."""
    return field(default=default, metadata={"range": allowed, **metadata})


def choice(default: str, choices: Iterable[str]) -> Any:
    """A string option with ``default`` whose value must be one of ``choices`` (the option list, defined once where
    the options are implemented). A default may be an interpolation (``${oc.env:...}``): its resolved value is
    checked."""
    choices = tuple(choices)
    if default not in choices and not default.startswith("${"):
        raise ValueError(f"default {default!r} is not one of its own choices {choices}")
    return field(default=default, metadata={"choices": choices})


def embedded(default: Any, real: str, allowed: Range | None = None) -> Any:
    """A default sized for the embedded CPU testbed; ``real`` says what the paper's real-model runs use;
    ``allowed`` the value's range."""
    return field(default=default, metadata={"embedded": real, **({"range": allowed} if allowed else {})})


def ranged_list(factory, allowed: Range) -> Any:
    """A list field (``default_factory``) whose every element must lie in ``allowed``."""
    return field(default_factory=factory, metadata={"range": allowed})


def _bad(key: str, value: Any, allowed: Range) -> ConfigValueError:
    return ConfigValueError(f"{key}={value!r} is out of range: it must be a finite number {allowed}")


def check_fields(node: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigValueError` for the first field of ``node`` (a dataclass, walked recursively) whose
    value lies outside its declared range or choices; ``prefix`` is the dotted key of ``node`` (``""`` at the root)."""
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        allowed, choices = f.metadata.get("range"), f.metadata.get("choices")
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
        elif choices is not None and value not in choices:
            raise ConfigValueError(f"{key}={value!r} is not a valid choice; valid choices: {', '.join(choices)}")
        elif allowed is not None and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in allowed:
                    raise _bad(key, value, allowed)
