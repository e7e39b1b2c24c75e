"""Tasks: prompts, held-out evaluation sets and a verifiable reward. Registry mirrors ``conf/task``."""

from __future__ import annotations

from dataclasses import dataclass

from lpreg.registry import Registry


@dataclass(frozen=True)
class Problem:
    prompt: str  # the text the policy continues
    answer: str  # the reference answer
    source: str  # data source tag, used for per-source evaluation metrics


@dataclass(frozen=True)
class EvalSet:
    """A held-out set and its protocol: greedy (one sample at T=0) or sampled avg@k at ``temperature``."""

    source: str
    problems: list[Problem]
    protocol: str = "greedy"  # "greedy" | "sampled"
    samples: int = 1
    temperature: float = 1.0


class Task:
    """Interface every task implements. ``reward`` returns 1.0 for a correct response, else 0.0.

    ``reward`` runs in grading worker processes (``lpreg/rewards.py``), so a task must be picklable; the three
    ``reward_*`` hooks below tune how it is graded and have safe defaults.
    """

    name: str
    reward_preload: tuple[str, ...] = ()  # modules the reward imports; the workers' fork server imports them once

    def train_problems(self) -> list[Problem]:
        raise NotImplementedError

    def eval_sets(self) -> list[EvalSet]:
        raise NotImplementedError

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        raise NotImplementedError

    def reward_key(self, response: str, problem: Problem, finished: bool) -> object:
        """A value that determines ``reward(response, problem, finished)``: the grading cache's key."""
        return response, problem.answer, finished

    def reward_warmup(self) -> None:
        """Run once in each grading worker before its first response (lazy imports, first-call set-up)."""

    def cache_key(self) -> str:
        """A string identifying everything that shapes the task's data (used by the warm-up cache)."""
        raise NotImplementedError

    def sft_examples(self) -> list[tuple[str, str]]:
        raise NotImplementedError(f"task {self.name!r} has no supervised warm-up data; use a pretrained model")


TASKS: Registry[type] = Registry("task")


def build_task(cfg) -> Task:
    # Import for the registration side effect.
    from lpreg.tasks import arithmetic, math  # noqa: F401

    return TASKS.get(cfg.name)(cfg)
