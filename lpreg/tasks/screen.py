"""A structural screen of a boxed math answer: what no legitimate answer needs, found before anything parses it.

Some answers cost a parser and sympy seconds to minutes, or more memory than the machine has: towers of exponents
and factorials of huge numbers are evaluated exactly (partly in C, where no signal interrupts them), deep nesting
makes the LaTeX parser backtrack. ``measure(text)`` reads the answer once, with a tokenizer and a bracket stack, and
returns the quantities of ``QUANTITIES``; ``reject(text, limits)`` names the first one over its bound, or returns
None. The bounds come from the shipped gold answers' own maxima with a wide margin (the fields ``screen_max_*`` of
``MathTaskConfig``; ``python benchmarks/rewards.py budget`` prints the gold maxima beside them).

Values are estimated, not computed, and from above wherever numbers are at least 2: within a group every number
counts as a factor (each at least 2, so that the product bounds their sum too), a power multiplies its base's
logarithm by its exponent, a factorial ``n!`` counts as ``n^n``, a binomial ``\\binom{n}{k}`` as ``2^n``, e-notation
``4.5e33`` as ``4.5 \\times 10^{33}``; letters count as 1. So the exponent of ``2^{9999 \\cdot 9999}`` is ~1e8
however it is written, and that of ``2^{2^{2^{2}}}`` exactly 16.

Pure and cheap: no sympy, one pass over the tokens and one walk of the groups, a few microseconds per token (13 us
per legitimate answer on average, about 1.5 ms for a sum of 400 terms). Not in the reference, whose prime_math
cascade rejects only long repetitive answers and otherwise relies on its alarms. Run on its own:
``python -m lpreg.tasks.screen '9^{9^{9^{99}}}'`` prints the measures.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

QUANTITIES: dict[str, str] = {
    "chars": "characters in the answer",
    "non_ascii": "characters outside printable ASCII (control characters included)",
    "digits": "digits in the longest number (integer and decimal part)",
    "depth": "deepest nesting of brackets: {, (, [ and \\{ (with or without \\left)",
    "exponent_height": "most exponents stacked on one another (x^2: 1, 2^{2^{n}} and 2^2^n: 2)",
    "exponent": "the largest value an exponent can take (estimated from above: numbers multiplied, powers evaluated)",
    "factorial": "the largest argument of a factorial (n!, n!!), \\Gamma or binomial coefficient (estimated likewise)",
    "entries": "the most cells of one environment (matrix, array, cases): rows x widest row",
}

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+)(?![\d.]))?|\*\*|\S", re.S)
_OPEN, _CLOSE = frozenset("{([") | {"\\{"}, frozenset("})]") | {"\\}"}
_NON_ASCII = re.compile(r"[^\t\n\r -~]")
_SIZING = frozenset({"\\left", "\\right", "\\big", "\\Big", "\\bigg", "\\Bigg", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr",
                     "\\biggl", "\\biggr", "\\Biggl", "\\Biggr", "\\middle"})
_POWER = frozenset({"^", "**"})
_ARGUMENTS = {"\\binom": 2, "\\dbinom": 2, "\\tbinom": 2, "\\Gamma": 1}  # functions of huge integers: arguments
_SPECIAL = _POWER | set(_ARGUMENTS) | {"!", "_", "\\begin", "\\end", "&", "\\\\"}
_LOG2 = math.log10(2)
_HUGE = 1e300  # log10 magnitudes are capped here: anything near it is over every bound


def _pow10(x: float) -> float:
    """10**x for a log10 magnitude, inf past float range."""
    return 10.0 ** x if x < 300 else math.inf


def _big(log_value: float) -> float:
    """log10 of n^n (a bound on n!) for n = 10**log_value."""
    return min(_HUGE, _pow10(log_value) * log_value)


@dataclass
class _Stats:
    exponent: float = 0.0
    exponent_height: int = 0
    factorial: float = 0.0
    entries: int = 0


def _number(text: str) -> float:
    """log10 of a number literal's value (at least 1)."""
    whole = text.split(".")[0].lstrip("0")
    return len(whole) - 1.0 if len(whole) > 15 else math.log10(max(float(text), 1.0))


def _scan(text: str) -> tuple[dict[str, float], list]:
    """The linear quantities, and the answer as nested lists (one per bracket; any closer closes the innermost,
    so ``[1, 3)`` is fine) of tokens (str), numbers (float: log10 of the value) and groups (list)."""
    stack: list[list] = [[]]
    deepest = digits = 0
    for m in _TOKEN.finditer(text):
        tok, number, exp10 = m.group(0, 1, 2)
        if number is not None:
            digits = max(digits, len(number) - ("." in number))
            stack[-1].append(_number(number))
            if exp10 is not None:  # e-notation: m x 10^k
                stack[-1] += ["\\cdot", 1.0, "^", _number(exp10.lstrip("+-"))]
        elif tok in _OPEN:
            group: list = []
            stack[-1].append(group)
            stack.append(group)
            deepest = max(deepest, len(stack) - 1)
        elif tok in _CLOSE:
            if len(stack) > 1:
                stack.pop()
        elif tok not in _SIZING:
            stack[-1].append(tok)
    non_ascii = len(_NON_ASCII.findall(text))
    return {"chars": len(text), "non_ascii": non_ascii, "digits": digits, "depth": deepest}, stack[0]


def _atom(item, stats: _Stats) -> tuple[float, int]:
    """(log10 magnitude estimate, exponent height) of one item; letters, commands and operators count as 1."""
    kind = type(item)
    if kind is float:
        return item, 0
    return _sequence(item, stats) if kind is list else (0.0, 0)


def _product(logs: list[float]) -> float:
    """log10 magnitude of a group from its factors': its one number, or its numbers multiplied, each counted as at
    least 2 (so that ``a + b <= a * b`` makes the estimate bound sums as well)."""
    logs = [f for f in logs if f > 0]
    return logs[0] if len(logs) == 1 else min(_HUGE, sum(max(f, _LOG2) for f in logs))


def _power(items: list, i: int, base: list, stats: _Stats) -> int:
    """Apply the ``^`` at ``items[i]`` (and any ``^`` stacked right after it: ``2^2^n``) to ``base`` ([log10
    magnitude, exponent height], rewritten in place); returns the index after the last exponent."""
    chain = []
    while i < len(items) and type(items[i]) is str and items[i] in _POWER:
        chain.append(items[i + 1] if i + 1 < len(items) else 0.0)
        i += 2
    exp_log, exp_height = _atom(chain[-1], stats)
    stats.exponent = max(stats.exponent, _pow10(exp_log))
    for below in reversed(chain[:-1]):  # the tower from the top down
        below_log, below_height = _atom(below, stats)
        exp_log, exp_height = min(_HUGE, below_log * _pow10(exp_log)), max(below_height, exp_height + 1)
        stats.exponent = max(stats.exponent, _pow10(exp_log))
    base[0], base[1] = min(_HUGE, base[0] * _pow10(exp_log)), max(base[1], exp_height + 1)
    stats.exponent_height = max(stats.exponent_height, base[1])
    return i


def _choose(items: list, stats: _Stats) -> tuple[float, int]:
    """``{n \\choose k}``: every side is an argument of a binomial coefficient, which is at most 2^n."""
    parts: list[list] = [[]]
    for item in items:
        if item == "\\choose":
            parts.append([])
        else:
            parts[-1].append(item)
    sides = [_sequence(part, stats) for part in parts]  # no \choose left in them: no deeper recursion
    n_log = max(log for log, _ in sides)
    stats.factorial = max(stats.factorial, _pow10(n_log))
    return min(_HUGE, _pow10(n_log) * _LOG2), max(height for _, height in sides)


def _sequence(items: list, stats: _Stats) -> tuple[float, int]:
    """Magnitude estimate and exponent height of a group's items; records exponents, factorial arguments and
    environment cells in ``stats``."""
    if "\\choose" in items:
        return _choose(items, stats)
    factors: list[list] = []  # [log10 magnitude, exponent height] per atom; ^ and ! rewrite the latest one
    envs: list[list[int]] = []  # per open \begin: [rows, cells in this row, widest row]
    i, n = 0, len(items)
    while i < n:
        item = items[i]
        if type(item) is not str or item not in _SPECIAL:
            factors.append(list(_atom(item, stats)) if type(item) is not str else [0.0, 0])
            i += 1
        elif item in _POWER:
            if not factors:
                factors.append([0.0, 0])
            i = _power(items, i, factors[-1], stats)
        elif item == "!":
            while i + 1 < n and items[i + 1] == "!":  # n!! <= n!
                i += 1
            if factors:
                stats.factorial = max(stats.factorial, _pow10(factors[-1][0]))
                factors[-1][0] = _big(factors[-1][0])
            i += 1
        elif item == "_":  # a subscript names a symbol: measured, not a factor
            _atom(items[i + 1] if i + 1 < n else 0.0, stats)
            i += 2
        elif item in _ARGUMENTS:  # \binom{n}{k} <= 2^n, \Gamma(n) <= n^n
            args = [_atom(a, stats) for a in items[i + 1: i + 1 + _ARGUMENTS[item]]]
            n_log = max((a for a, _ in args), default=0.0)
            stats.factorial = max(stats.factorial, _pow10(n_log))
            value = _big(n_log) if item == "\\Gamma" else min(_HUGE, _pow10(n_log) * _LOG2)
            factors.append([value, max((h for _, h in args), default=0)])
            i += 1 + len(args)
        elif item == "\\begin":
            envs.append([1, 1, 1])
            i += 2  # and the environment's name
        elif item == "\\end":
            if envs:
                rows, _, widest = envs.pop()
                stats.entries = max(stats.entries, rows * widest)
            i += 2
        else:  # & or \\: a cell or a row of the innermost environment
            if envs:
                cells = envs[-1]
                cells[1] = cells[1] + 1 if item == "&" else 1
                cells[0] += item == "\\\\"
                cells[2] = max(cells[2], cells[1])
            i += 1
    for rows, _, widest in envs:  # environments left open
        stats.entries = max(stats.entries, rows * widest)
    return _product([f for f, _ in factors]), max((h for _, h in factors), default=0)


def measure(text: str, limits: Mapping[str, float] | None = None) -> dict[str, float]:
    """Every quantity of ``QUANTITIES`` for ``text``; with ``limits``, the quantities up to the first one over its
    bound (the length before anything else, the nested groups walked only once the nesting depth is in bounds)."""
    if limits is not None and len(text) > limits["chars"]:
        return {"chars": len(text)}
    out, tree = _scan(text)
    over = limits is not None and any(out[q] > limits[q] for q in out)
    if over or out["depth"] > sys.getrecursionlimit() // 4:  # the groups are walked recursively, 2 frames a level
        return out
    stats = _Stats()
    _sequence(tree, stats)
    return out | {"exponent_height": stats.exponent_height, "exponent": stats.exponent, "factorial": stats.factorial,
                  "entries": stats.entries}


def reject(text: str, limits: Mapping[str, float]) -> str | None:
    """Why ``text`` cannot be a legitimate answer under ``limits`` (one bound per ``QUANTITIES`` name), or None."""
    values = measure(text, limits)
    for name in QUANTITIES:
        if name in values and values[name] > limits[name]:
            return f"{name} {values[name]:.4g} > {limits[name]:.4g}"
    return None


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(repr(arg[:80]), {k: f"{v:.4g}" for k, v in measure(arg).items()})
