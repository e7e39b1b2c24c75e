"""How a diagnostic of an update combines over the pieces one update is computed in.

A loss is called once per micro-batch (``trainer.max_tokens_per_micro_batch``), and the token pass applies the output
head one chunk at a time; what the loss reports about an update must not depend on either cut. So a loss does not
report plain floats: each value says how it combines, and the trainer (or the verl backend) merges the micro-batches
of a mini-batch before turning them into numbers.

- :class:`Sum` for counts and for the loss parts (each micro-batch's loss is already its share of the mini-batch's):
  added up.
- :class:`Mean` for a mean over some items (tokens, regularized tokens, candidates): it carries the items' total and
  their weight (count), so the merged value is Σ total / Σ weight, the mean over the whole mini-batch. A ratio of two
  counts (regularized / candidates) is a ``Mean`` with the numerator as total and the denominator as weight. NaN when
  the weight is 0 (nothing to average).
- :class:`Max` for the largest value over the pieces (NaN pieces ignored).

A step holds one or more mini-batches (``trainer.mini_batches``, one optimizer step each): the step logs the mean of
its mini-batches' values, NaN mini-batches left out (:func:`step_values`), so counts stay "per mini-batch".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sum:
    value: float

    def merge(self, other: Sum) -> Sum:
        return Sum(self.value + other.value)

    @property
    def result(self) -> float:
        return self.value


@dataclass(frozen=True)
class Mean:
    total: float  # Σ over the items of the averaged quantity
    weight: float  # number (or total weight) of the items

    def merge(self, other: Mean) -> Mean:
        return Mean(self.total + other.total, self.weight + other.weight)

    @property
    def result(self) -> float:
        return self.total / self.weight if self.weight else math.nan


@dataclass(frozen=True)
class Max:
    value: float

    def merge(self, other: Max) -> Max:
        if math.isnan(self.value):
            return other
        return self if math.isnan(other.value) else Max(max(self.value, other.value))

    @property
    def result(self) -> float:
        return self.value


Reducible = Sum | Mean | Max


def merge(parts: Iterable[dict[str, Reducible]]) -> dict[str, Reducible]:
    """Key-wise merge of the micro-batches of one update; a key's kind must be the same in every part."""
    out: dict[str, Reducible] = {}
    for part in parts:
        for key, value in part.items():
            if key in out and type(out[key]) is not type(value):
                raise TypeError(f"metric {key!r} is a {type(out[key]).__name__} in one micro-batch and a "
                                f"{type(value).__name__} in another")
            out[key] = out[key].merge(value) if key in out else value
    return out


def results(merged: dict[str, Reducible]) -> dict[str, float]:
    """The numbers of a merged update."""
    return {key: float(value.result) for key, value in merged.items()}


def step_values(updates: Iterable[dict[str, float]]) -> dict[str, float]:
    """The step's value of each metric: the mean over its updates (mini-batches), NaN values left out; NaN when no
    update has a finite value."""
    acc: dict[str, list[float]] = {}
    for row in updates:
        for key, value in row.items():
            acc.setdefault(key, []).append(value)
    out = {}
    for key, values in acc.items():
        finite = [v for v in values if not math.isnan(v)]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out
