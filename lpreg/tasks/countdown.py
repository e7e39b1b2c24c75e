"""A mini-Countdown: reach a target with a few small numbers and + - * /, each number used exactly once.

A prompt lists ``task.n_numbers`` numbers from 1 to ``task.max_number`` and a target, ``3,5,7:22=``; a response is an
arithmetic expression, ``3*5+7<eos>``. It is correct when it parses (numbers, ``+ - * /``, parentheses), uses the
given numbers exactly once each (as a multiset: no number missing, none repeated, no digits glued into a new
number), and evaluates exactly (``fractions.Fraction``, no floats) to the target; a division by zero is wrong.
Intermediate results may be any rational number (a relaxation of the TV show's positive-integer rule).

Every problem's solution set is enumerable: all binary trees over all orderings of the numbers with all operators
(7,680 expressions for four numbers), kept where they reach the target, counted up to the equivalences of
arithmetic that do not change what is computed: commutativity and associativity of + and *, and - and / folded into
them (``a-(b-c)`` is ``a-b+c``, ``a/(b/c)`` is ``a*c/b``). :func:`canonical` gives that form; a correct response's
solution is its canonical form, so the breadth metrics (distinct correct solutions found per problem, their share of
the solution set) count ``3*5+7`` and ``7+5*3`` once.

Problems: every multiset of numbers with every integer target in [1, ``task.max_target``] some expression reaches
(a seeded sample of ``task.max_problems`` when there are more), the numbers shown in a seeded order; validation and
test problems are drawn from them (``task.seed``), the rest are training problems, all three disjoint. The warm-up shows one
solution per training problem, drawn from its set (seeded), written with the fewest parentheses.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from functools import lru_cache

from lpreg.tasks import TASKS, EvalSet, Problem, Task, split3

OPS = "+-*/"
MAX_MULTISETS = 5000  # sets of numbers whose expressions the task enumerates (4 numbers up to 16: 3,876)


# ---- expressions: trees are numbers or (op, left, right) ------------------------------------------------------


def evaluate(tree) -> Fraction | None:
    """The exact value of an expression tree; None on a division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else leaves(tree[1]) + leaves(tree[2])


def canonical(tree) -> str:
    """A string equal for two trees exactly when they differ by commutativity and associativity of + and *, with
    - and / folded in (module docstring): a sum is a sorted list of signed terms, a product a sorted list of factors
    with exponents ±1, recursively."""

    def terms(t, sign):  # the signed terms of a sum
        if not isinstance(t, int) and t[0] in "+-":
            return terms(t[1], sign) + terms(t[2], sign if t[0] == "+" else -sign)
        return [(sign, key(t))]

    def factors(t, power):  # the factors of a product with their exponents
        if not isinstance(t, int) and t[0] in "*/":
            return factors(t[1], power) + factors(t[2], power if t[0] == "*" else -power)
        return [(power, key(t))]

    def key(t):
        if isinstance(t, int):
            return str(t)
        if t[0] in "+-":
            return "S(" + ",".join(f"{'+' if s > 0 else '-'}{k}" for s, k in sorted(terms(t, 1))) + ")"
        return "P(" + ",".join(f"{'*' if p > 0 else '/'}{k}" for p, k in sorted(factors(t, 1))) + ")"

    return key(tree)


def render(tree, parent: str | None = None, right: bool = False) -> str:
    """The expression with the fewest parentheses that still parses back to the same tree."""
    if isinstance(tree, int):
        return str(tree)
    op, a, b = tree
    text = render(a, op, False) + op + render(b, op, True)
    prec = {"+": 1, "-": 1, "*": 2, "/": 2}
    if parent is not None and (prec[op] < prec[parent] or (right and prec[op] == prec[parent] and parent in "-/")):
        return f"({text})"
    return text


def trees(numbers: tuple[int, ...]):
    """Every expression tree that uses each of ``numbers`` exactly once (all orderings, shapes and operators)."""
    if len(numbers) == 1:
        yield numbers[0]
        return
    for order in set(itertools.permutations(numbers)):
        yield from _shapes(order)


def _shapes(order: tuple[int, ...]):
    if len(order) == 1:
        yield order[0]
        return
    for cut in range(1, len(order)):
        for left in _shapes(order[:cut]):
            for right in _shapes(order[cut:]):
                for op in OPS:
                    yield (op, left, right)


@lru_cache(maxsize=4096)
def solutions(numbers: tuple[int, ...], target: int) -> dict[str, str]:
    """The problem's solution set: canonical form -> one rendering, for every tree reaching ``target``."""
    out = {}
    for t in trees(numbers):
        if evaluate(t) == target:
            out.setdefault(canonical(t), render(t))
    return out


@lru_cache(maxsize=4096)
def reachable(numbers: tuple[int, ...]) -> frozenset[int]:
    return frozenset(int(v) for t in trees(numbers) if (v := evaluate(t)) is not None and v.denominator == 1)


# ---- parsing a response -----------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``, ``term := atom (('*'|'/') atom)*``,
    ``atom := number | '(' expr ')'``; whitespace is not allowed."""

    def __init__(self, text: str):
        self.text, self.i = text, 0

    def parse(self):
        tree = self.expr()
        if self.i != len(self.text):
            raise ValueError("trailing characters")
        return tree

    def expr(self):
        tree = self.term()
        while self.i < len(self.text) and self.text[self.i] in "+-":
            op = self.text[self.i]
            self.i += 1
            tree = (op, tree, self.term())
        return tree

    def term(self):
        tree = self.atom()
        while self.i < len(self.text) and self.text[self.i] in "*/":
            op = self.text[self.i]
            self.i += 1
            tree = (op, tree, self.atom())
        return tree

    def atom(self):
        if self.i < len(self.text) and self.text[self.i] == "(":
            self.i += 1
            tree = self.expr()
            if self.i >= len(self.text) or self.text[self.i] != ")":
                raise ValueError("unbalanced parenthesis")
            self.i += 1
            return tree
        j = self.i
        while j < len(self.text) and self.text[j].isdigit():
            j += 1
        if j == self.i:
            raise ValueError("a number expected")
        value, self.i = int(self.text[self.i: j]), j
        return value


MAX_RESPONSE_CHARS = 64  # longer responses are not parsed (a legitimate one has a few numbers)


def parse(response: str):
    """The expression tree of ``response``, or None when it does not parse."""
    if not response or len(response) > MAX_RESPONSE_CHARS:
        return None
    try:
        return _Parser(response).parse()
    except (ValueError, RecursionError):
        return None


def check(response: str, numbers: tuple[int, ...], target: int):
    """The response's tree when it is a correct solution (module docstring), else None."""
    tree = parse(response)
    if tree is None or sorted(leaves(tree)) != sorted(numbers) or evaluate(tree) != target:
        return None
    return tree


# ---- the task -------------------------------------------------------------------------------------------------


def prompt(numbers: tuple[int, ...], target: int) -> str:
    return ",".join(map(str, numbers)) + f":{target}="


def read_prompt(text: str) -> tuple[tuple[int, ...], int]:
    nums, target = text.rstrip("=").split(":")
    return tuple(int(x) for x in nums.split(",")), int(target)


@TASKS.register("countdown")
class Countdown(Task):
    name = "countdown"

    def __init__(self, cfg):
        self.cfg = cfg
        multisets = math.comb(cfg.max_number + cfg.n_numbers - 1, cfg.n_numbers)
        if multisets > MAX_MULTISETS:  # every multiset's solution set is enumerated when the task is built
            raise ValueError(f"task.max_number={cfg.max_number} with task.n_numbers={cfg.n_numbers} gives {multisets:,} "
                             f"sets of numbers to enumerate; at most {MAX_MULTISETS:,} (lower either)")
        rng = random.Random(cfg.seed)
        problems = []
        for numbers in itertools.combinations_with_replacement(range(1, cfg.max_number + 1), cfg.n_numbers):
            for target in sorted(t for t in reachable(numbers) if 1 <= t <= cfg.max_target):
                shown = list(numbers)
                rng.shuffle(shown)  # the prompt lists the numbers in a seeded order
                problems.append((tuple(shown), target))
        if len(problems) > cfg.max_problems:
            problems = rng.sample(problems, cfg.max_problems)
        train, val, test = split3(problems, cfg.n_validation, cfg.n_test, cfg.seed, "task.n_validation / task.n_test")
        self._train, self._eval = train, {"validation": val, "test": test}
        self._problems = [self._problem(n, t) for n, t in train]
        need = max(len(r) for r in self._demos()) + 1
        if cfg.max_response_len < need:
            raise ValueError(f"task.max_response_len={cfg.max_response_len} is shorter than the longest warm-up "
                             f"solution ({need} tokens with the end token)")

    def _problem(self, numbers, target) -> Problem:
        return Problem(prompt(numbers, target), str(target), self.name)

    def train_problems(self) -> list[Problem]:
        return self._problems

    def eval_sets(self, split: str) -> list[EvalSet]:
        return [EvalSet(self.name, [self._problem(n, t) for n, t in self._eval[split]])]

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        numbers, target = read_prompt(problem.prompt)
        return float(finished and check(response, numbers, target) is not None)

    def solution_key(self, response: str, problem: Problem) -> str | None:
        numbers, target = read_prompt(problem.prompt)
        tree = check(response, numbers, target)
        return None if tree is None else canonical(tree)

    def solution_count(self, problem: Problem) -> int:
        numbers, target = read_prompt(problem.prompt)
        return len(solutions(tuple(sorted(numbers)), target))

    def _demos(self) -> list[str]:
        rng = random.Random(self.cfg.seed + 1)
        out = []
        for numbers, target in self._train:
            found = solutions(tuple(sorted(numbers)), target)
            out.append(found[rng.choice(sorted(found))])
        return out

    def sft_examples(self, stage: str = "base") -> list[tuple[str, str]]:
        """One solution per training problem, drawn from its solution set (seeded), with the fewest parentheses."""
        return [(prompt(n, t), demo) for (n, t), demo in zip(self._train, self._demos())]
