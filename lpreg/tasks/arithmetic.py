"""The embedded task: fixed-width two-operand addition, e.g. prompt ``07+45=`` and answer ``52<eos>``.

Train and held-out test splits are drawn from all operand pairs with ``task.seed`` (fixed across run seeds, so
every run is scored on the same held-out set). The reward is exact match of the response before the end token;
a response without the end token (it hit the length limit) earns 0.
"""

from __future__ import annotations

import random

from lpreg.tasks import TASKS, EvalSet, Problem, Task


@TASKS.register("arithmetic")
class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, cfg):
        self.cfg = cfg
        hi = 10**cfg.digits
        pairs = [(a, b) for a in range(hi) for b in range(hi)]
        random.Random(cfg.seed).shuffle(pairs)
        if not 0 < cfg.n_test < len(pairs):
            raise ValueError(f"task.n_test={cfg.n_test} must be between 1 and {len(pairs) - 1}")
        self._test = [self._problem(a, b) for a, b in pairs[: cfg.n_test]]
        self._train = [self._problem(a, b) for a, b in pairs[cfg.n_test :]]

    def _problem(self, a: int, b: int) -> Problem:
        w = self.cfg.digits
        return Problem(prompt=f"{a:0{w}d}+{b:0{w}d}=", answer=str(a + b), source=self.name)

    def train_problems(self) -> list[Problem]:
        return self._train

    def eval_sets(self) -> list[EvalSet]:
        return [EvalSet(self.name, self._test, protocol="greedy")]

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        return float(finished and response == problem.answer)

    def cache_key(self) -> str:
        return f"arithmetic-d{self.cfg.digits}-s{self.cfg.seed}-t{self.cfg.n_test}"

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(p.prompt, p.answer) for p in self._train]
