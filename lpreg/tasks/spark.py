"""The spark task: addition where one rare token, the spark ``?``, opens a second answer mode that is better once
practised: a scratchpad of column sums.

A prompt is fixed-width addition, ``457+386=``. Two kinds of correct response:

- direct: the sum, ``843<eos>``;
- spark: ``?`` then the column sums from the units up, each as two digits with the carry included, then ``:`` and
  the sum: ``?13,14,08:843<eos>`` (7+6 = 13, 5+8+1 = 14, 4+3+1 = 08). Each column sum depends only on its two digits
  and the previous column's tens digit: local work, one column at a time.

The reward is exact match of the final answer (after the last ``:`` in spark mode), and 0 for a response cut at the
length limit; the scratchpad itself is not graded. The decision point is response position 0: the spark against the
first digit of a direct answer.

The supervised warm-up shows the spark on a fraction ``task.spark_demos`` of its demonstrations (seeded by
``task.seed``), so after it the spark is rare at the decision point; its seeded stage (``lpreg/native/models.py``)
practises the mode on a further share ``task.spark_practice`` with the spark already in the prompt (the mode's skill,
not the choice: the base stage does not, as that practice kept the base from learning the direct mode in our runs),
so the mode is under-practised: early spark rollouts are often wrong and fall in negative-advantage groups.
``task.spark_unfinished`` makes the practised mode fail in one place RL can mend: that share of the practice
demonstrations stops after the column sums, each with a second demonstration that reads the answer off the sums given
in the prompt. Two control variants: ``task.spark_demos=0`` never shows the spark as a response, so it starts extinct
at the decision point (its mode is still practised behind a spark given in the prompt, and the direct mode is shown
as often as in the shipped task, though the base phase it trains learns it differently: README); ``task.spark_demos=0
task.spark_practice=0`` has no spark mode at all (its practice phase then trains the direct mode alone).

Held-out sets: the split's problems decoded greedily (the policy's own choice of mode), and a diagnostic set
``spark_forced``: the first ``task.n_forced`` of them with the spark appended to the prompt, i.e. the spark mode's
accuracy when forced (left out of ``eval/mean``). ``task.train_forced`` trains on the forced prompts instead, so that
RL practises the spark mode on every problem: the mode's ceiling, against the direct mode that GRPO trains.

How it was designed, and what the embedded model does on it, is measured in the README ("The spark task").
"""

from __future__ import annotations

import random

from lpreg.tasks import TASKS, DecisionPoint, EvalSet, Problem, Task, split3

SPARK = "?"
FORCED = "spark_forced"  # the diagnostic source: the spark appended to the prompt


def scratchpad(a: int, b: int, digits: int) -> str:
    """The column sums of ``a + b`` from the units up, two digits each with the carry included: ``13,14,08``."""
    out, carry = [], 0
    for k in range(digits):
        s = a // 10**k % 10 + b // 10**k % 10 + carry
        out.append(f"{s:02d}")
        carry = s // 10
    return ",".join(out)


MODES = ("columns", "reversed")  # task.spark_mode


def spark_response(a: int, b: int, digits: int, mode: str = "columns") -> str:
    """The spark-mode response: the column sums then the answer (``columns``), or the answer's digits from the units
    up (``reversed``)."""
    if mode == "reversed":
        return SPARK + str(a + b)[::-1]
    return f"{SPARK}{scratchpad(a, b, digits)}:{a + b}"


def final_answer(response: str, mode: str = "columns") -> str:
    """The answer a response gives: a spark response's after its last ``:`` (``columns``) or its digits read back
    (``reversed``); a direct response as it is."""
    if not response.startswith(SPARK):
        return response
    return response[1:][::-1] if mode == "reversed" else response.rsplit(":", 1)[-1]


def longest_response(digits: int, mode: str = "columns") -> int:
    """Tokens of the longest correct response (spark mode with a final carry, end token included)."""
    return len(spark_response(10**digits - 1, 10**digits - 1, digits, mode)) + 1


@TASKS.register("spark")
class SparkTask(Task):
    name = "spark"
    decision = DecisionPoint(SPARK)

    def __init__(self, cfg):
        self.cfg = cfg
        need = longest_response(cfg.digits, cfg.spark_mode)
        if cfg.max_response_len < need:
            raise ValueError(f"task.max_response_len={cfg.max_response_len} is shorter than the longest spark-mode "
                             f"response of {cfg.digits}-digit addition ({need} tokens)")
        if cfg.spark_unfinished and cfg.spark_mode != "columns":
            raise ValueError(f"task.spark_unfinished={cfg.spark_unfinished:g} needs task.spark_mode=columns (the "
                             f"column sums and the answer after them); task.spark_mode={cfg.spark_mode} has no sums: "
                             f"set task.spark_unfinished=0 for it")
        hi = 10**cfg.digits
        codes = range(hi * hi)  # operand pairs a * hi + b; a seeded sample of them for 3 digits or more
        codes = random.Random(cfg.seed).sample(codes, cfg.max_problems) if len(codes) > cfg.max_problems else codes
        pairs = [divmod(c, hi) for c in codes]
        train, val, test = split3(pairs, cfg.n_validation, cfg.n_test, cfg.seed, "task.n_validation / task.n_test")
        self._train = train
        self._eval = {"validation": val, "test": test}
        self._problems = [self._problem(a, b, FORCED if cfg.train_forced else self.name) for a, b in train]

    def _prompt(self, a: int, b: int) -> str:
        w = self.cfg.digits
        return f"{a:0{w}d}+{b:0{w}d}="

    def _problem(self, a: int, b: int, source: str = "spark") -> Problem:
        return Problem(self._prompt(a, b) + (SPARK if source == FORCED else ""), str(a + b), source)

    def train_problems(self) -> list[Problem]:
        return self._problems

    def eval_sets(self, split: str) -> list[EvalSet]:
        pairs = self._eval[split]
        out = [EvalSet(self.name, [self._problem(a, b) for a, b in pairs])]
        if self.cfg.n_forced:
            out.append(EvalSet(FORCED, [self._problem(a, b, FORCED) for a, b in pairs[: self.cfg.n_forced]],
                               diagnostic=True))
        return out

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        text = SPARK + response if problem.source == FORCED else response  # a forced response continues the spark
        return float(finished and final_answer(text, self.cfg.spark_mode) == problem.answer)

    def reward_key(self, response: str, problem: Problem, finished: bool) -> object:
        return response, problem.answer, problem.source, finished

    def warmup_phases(self) -> list[tuple[str, int, float]]:
        """The base phase (the direct mode, the spark rare), then the practice phase (the spark mode practised)."""
        c = self.cfg
        return [("base", c.warmup_steps, c.warmup_lr)] + ([("practice", c.practice_steps, c.warmup_lr)]
                                                           if c.practice_steps else [])

    def sft_examples(self, stage: str = "base") -> list[tuple[str, str]]:
        """Every training problem once, in seeded random modes (``task.seed``): the spark response on a
        ``task.spark_demos`` share; after the base phase (``practice``, ``seeded``) also the spark mode practised
        after a spark already in the prompt on a ``task.spark_practice`` share (it trains the mode without teaching the
        choice at the decision point), a ``task.spark_unfinished`` share of those split in two (the sums then the end,
        and the answer read off the sums); the direct answer on the rest."""
        c = self.cfg
        rng = random.Random(c.seed + 1)
        practice = 0.0 if stage == "base" else c.spark_practice
        out = []
        for a, b in self._train:
            u = rng.random()
            if u < c.spark_demos:
                out.append((self._prompt(a, b), spark_response(a, b, c.digits, c.spark_mode)))
            elif u < c.spark_demos + practice:
                cue = self._prompt(a, b) + SPARK
                if c.spark_unfinished and rng.random() < c.spark_unfinished:
                    sums = scratchpad(a, b, c.digits)
                    # the column sums, then the end (no answer); and the answer read off them
                    out += [(cue, sums), (cue + sums + ":", str(a + b))]
                else:
                    out.append((cue, spark_response(a, b, c.digits, c.spark_mode)[1:]))
            else:
                out.append((self._prompt(a, b), str(a + b)))
        return out

