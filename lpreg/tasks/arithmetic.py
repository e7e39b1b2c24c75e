"""The addition task: fixed-width two-operand addition, e.g. prompt ``07+45=`` and answer ``52<eos>``.

Training, validation and test problems are disjoint sets of operand pairs drawn with ``task.seed`` (fixed across run
seeds, so every run is scored on the same held-out problems). The reward is exact match of the response before the
end token; a response without the end token (it hit the length limit) earns 0. Its one answer per problem means the
low-probability tokens of a response are wrong digits: see the spark task for a testbed where rare tokens matter.
"""

from __future__ import annotations

from lpreg.tasks import TASKS, EvalSet, Problem, Task, split3


@TASKS.register("arithmetic")
class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, cfg):
        self.cfg = cfg
        hi = 10**cfg.digits
        pairs = [(a, b) for a in range(hi) for b in range(hi)]
        train, val, test = split3(pairs, cfg.n_validation, cfg.n_test, cfg.seed, "task.n_validation / task.n_test")
        self._train = [self._problem(a, b) for a, b in train]
        self._eval = {"validation": [self._problem(a, b) for a, b in val], "test": [self._problem(a, b) for a, b in test]}

    def _problem(self, a: int, b: int) -> Problem:
        w = self.cfg.digits
        return Problem(prompt=f"{a:0{w}d}+{b:0{w}d}=", answer=str(a + b), source=self.name)

    def train_problems(self) -> list[Problem]:
        return self._train

    def eval_sets(self, split: str) -> list[EvalSet]:
        return [EvalSet(self.name, self._eval[split], protocol="greedy")]

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        return float(finished and response == problem.answer)

    def sft_examples(self, stage: str = "base") -> list[tuple[str, str]]:
        return [(p.prompt, p.answer) for p in self._train]
