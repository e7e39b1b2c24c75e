"""Tasks: prompts, held-out evaluation sets and a verifiable reward. The registry mirrors the ``task=`` config group.

Every task has three disjoint sets of problems: ``train`` (rollouts), ``validation`` (tuning and selection) and
``test`` (reporting); ``eval.split`` says which one an evaluation scores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from lpreg.registry import Registry

EVAL_SPLITS = ("validation", "test")  # eval.split: tuning and selection, or reporting
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    prompt: str  # the text the policy continues
    answer: str  # the reference answer
    source: str  # data source tag, used for per-source evaluation metrics


@dataclass(frozen=True)
class EvalSet:
    """A held-out set and its protocol: greedy (one sample at T=0) or sampled avg@k at ``temperature``.

    A ``diagnostic`` set measures something other than the policy's own accuracy (e.g. one answer mode forced) and
    is left out of ``eval/mean``."""

    source: str
    problems: list[Problem]
    protocol: str = "greedy"  # "greedy" | "sampled"
    samples: int = 1
    temperature: float = 1.0
    diagnostic: bool = False


@dataclass(frozen=True)
class DecisionPoint:
    """A task's rare token that opens a second answer mode (the "spark"), chosen at response position 0: the trainer
    logs its probability there, how often rollouts use it, accuracy by mode and how often a regularizer acts on it."""

    token: str  # one token of the policy's tokenizer


class Task:
    """Interface every task implements. ``reward`` returns 1.0 for a correct response, else 0.0.

    ``reward`` runs in grading worker processes (``lpreg/rewards.py``), so a task must be picklable; the
    ``reward_*`` hooks below tune how it is graded and have safe defaults.
    """

    name: str
    reward_preload: tuple[str, ...] = ()  # modules the reward imports; the workers' fork server imports them once
    decision: DecisionPoint | None = None  # the task's spark, if it has one

    def train_problems(self) -> list[Problem]:
        raise NotImplementedError

    def eval_sets(self, split: str) -> list[EvalSet]:
        """The held-out sets of ``split`` (one of ``EVAL_SPLITS``)."""
        raise NotImplementedError

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        raise NotImplementedError

    def reward_screen(self, response: str, problem: Problem, finished: bool) -> str | None:
        """Why ``response`` scores 0 without being graded (it cannot be a legitimate answer), or None to grade it.

        Called in the trainer's process for every response before the cache and the pool, so it must be cheap
        (no parsing); ``reward`` must score such a response 0 as well."""
        return None

    def reward_key(self, response: str, problem: Problem, finished: bool) -> object:
        """A value that determines ``reward(response, problem, finished)``: the grading cache's key."""
        return response, problem.answer, finished

    def reward_warmup(self) -> None:
        """Run once in each grading worker before its first response (lazy imports, first-call set-up)."""

    def solution_key(self, response: str, problem: Problem) -> object | None:
        """The solution a correct ``response`` gives, in a form where equivalent solutions are equal (breadth
        metrics: distinct solutions found); None when the task has one answer per problem."""
        return None

    def solution_count(self, problem: Problem) -> int | None:
        """How many distinct solutions ``problem`` has (coverage); None when the task does not enumerate them."""
        return None

    def warmup_phases(self) -> list[tuple[str, int, float]]:
        """The shared phases of the supervised warm-up, ``(stage, steps, lr)`` in order (``lpreg/native/models.py``);
        one base phase of ``task.warmup_steps`` at ``task.warmup_lr`` unless a task says otherwise."""
        return [("base", self.cfg.warmup_steps, self.cfg.warmup_lr)]

    def sft_examples(self, stage: str = "base") -> list[tuple[str, str]]:
        """``(prompt, target)`` demonstrations of the supervised warm-up's ``stage`` (``base`` or ``seeded``,
        ``lpreg/native/models.py``); most tasks show the same in both."""
        raise NotImplementedError(f"task {self.name!r} has no supervised warm-up data; use a pretrained model")


def split3(items: Sequence[T], n_validation: int, n_test: int, seed: int, what: str) -> tuple[list[T], list[T], list[T]]:
    """``(train, validation, test)``: ``items`` shuffled with ``seed`` and cut into disjoint parts (test first, then
    validation, the rest for training); ``what`` names the config keys in the error."""
    if n_validation < 1 or n_test < 1 or n_validation + n_test >= len(items):
        raise ValueError(f"{what}: validation ({n_validation}) and test ({n_test}) need at least one problem each and "
                         f"must leave training problems out of {len(items)}")
    order = list(items)
    random.Random(seed).shuffle(order)
    return order[n_validation + n_test:], order[n_test: n_test + n_validation], order[:n_test]


TASKS: Registry[type] = Registry("task")


def build_task(cfg) -> Task:
    # Import for the registration side effect.
    from lpreg.tasks import arithmetic, countdown, math, spark  # noqa: F401

    return TASKS.get(cfg.name)(cfg)
