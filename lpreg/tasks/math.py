"""Math word problems from JSONL files (the paper's setting): boxed answers graded with math-verify.

Rows need ``problem`` and ``answer`` (``data_source`` optional). The paper's five benchmarks and a 2,000-problem
DAPO-Math-17k sample ship in ``lpreg/data/math/`` (provenance, licenses and checksums in its README);
``python -m lpreg.data prepare`` downloads the full sets. Prompts use the R1-Zero template of the reference code.
Grading follows the reference's in spirit: the answer is the content of the **last** ``\\boxed{...}``
(brace-balanced); no box scores 0; otherwise both sides go through ``normalize_answer`` and the answer is correct if
it equals the reference after whitespace normalization or if ``math_verify.verify`` says the two parse to equal
expressions; an empty answer or an empty reference scores 0. Before any of that, the box goes through a structural
screen (``lpreg/tasks/screen.py``, bounds ``task.screen_max_*``): an answer no legitimate solution needs (a tower of
exponents, a factorial of a huge number, deep nesting, ...) scores 0 unparsed, and ``reward_screen`` names the
reason for the trainer's counts. math-verify's own time limits are ``task.parse_timeout_s`` and
``task.verify_timeout_s``, tighter than its 5 s defaults (whole seconds: they are ``signal.alarm``, active in a
process's main thread only; in another thread they are off and the worker pool's budget is the only bound).
The extraction is our own ~15 lines rather than math-verify's extractor because the reference only counts the last
box (math-verify would also accept unboxed answers). The reference's Hendrycks/sympy cascade (prime_math) is not
reproduced; math-verify is its last fallback and covers the same equivalences in our tests. Evaluation protocol per
source: ``task.sampled_sources`` (AIME in the paper) are scored avg@k at T=0.6; the rest greedily. The validation
split is ``task.n_validation`` problems held out of the training file (a fixed shuffle), scored greedily; the test
split is the benchmarks.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lpreg.data import resolve_path
from lpreg.tasks import TASKS, EvalSet, Problem, Task, screen

TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The final answer is put in \\boxed{{}}.\nUser: {problem}\nAssistant: Let me solve this step by step.\n<think>"
)


_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}`` in ``text``, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for m in _BRACE.finditer(text, i):  # only the braces: a long box costs little
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[i:m.start()]
    return None


# A whole answer in e-notation (Minerva writes ``4.5e33``, ``1.77e-6``); LaTeX and math-verify read ``e`` as Euler's e.
_E_NOTATION = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)")
# A number literal with a bare trailing point (Minerva's ``-1./3``), which math-verify reads as a truncated number.
_BARE_POINT = re.compile(r"(\d)\.(?!\d)")
# Python/NumPy function names in a reference (Minerva's ``np.arcsin(10/13)``) -> the LaTeX command.
_NUMPY_FN = re.compile(r"\bnp\.(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|exp|log)\b")
# Punctuation that ends a sentence rather than an answer (OlympiadBench's ``(-\infty, 0) \cup\{1\}.``).
_TRAILING_PUNCT = re.compile(r"(?:\s|[.;:]|\\[,;!]|\\quad)+$")
# A ``$`` that is not the escaped dollar sign ``\$`` of MATH-500 answers.
_BARE_DOLLAR = re.compile(r"(?<!\\)\$")
# Subscripts math-verify cannot parse or spells two ways: ``m_{\max }``, ``\lambda_{\text {red}}``, ``E_1`` vs ``E_{1}``.
_SUBSCRIPT_COMMAND = re.compile(r"_\{\s*\\(?:text\s*\{([^{}]*)\}|(max|min))\s*\}")
_BARE_SUBSCRIPT = re.compile(r"_([A-Za-z0-9])")
# A variable glued to a half-open interval (OlympiadBench's ``t(0,4]``), which math-verify cannot parse.
_VAR_INTERVAL = re.compile(r"([A-Za-z])\s*(\([^()\[\]]*\]|\[[^()\[\]]*\))")
# ``9 i`` parses to a different symbol i than ``9i`` in math-verify 0.9, so ``9 i + 6`` != ``6+9i``.
_SPACED_I = re.compile(r"(\d)\s+i(?![A-Za-z])")
# Primes written with apostrophes (``y'``) parse as nothing; the references write ``y^{\prime}``.
_PRIME = re.compile(r"(?<=[A-Za-z}])('+)")


def normalize_answer(answer: str) -> str:
    """An answer rewritten so that math-verify reads the notation of the benchmarks the way they mean it.

    Found by grading every shipped gold answer against equivalent forms of itself (``scripts/gold_sweep.py``):
    whole-answer e-notation ``4.5e33`` -> ``4.5 \\times 10^{33}``; ``np.arcsin`` -> ``\\arcsin``; a bare trailing
    point after a digit (``-1./3``) dropped; stray ``$`` (a source artifact, ``...+$ $\\dot{x}_0 ...``) removed;
    sentence punctuation, LaTeX spacing and whitespace at the end removed; subscripts ``_{\\max}``,
    ``_{\\text{red}}``, ``_1`` -> ``_{max}``, ``_{red}``, ``_{1}``; ``t(0,4]`` -> ``t \\in (0,4]``; ``9 i`` -> ``9i``;
    ``y'`` -> ``y^{\\prime}``. Idempotent; applied to references when they are loaded and to both sides in ``grade``.
    """
    text = _BARE_DOLLAR.sub(" ", answer).strip()
    text = _TRAILING_PUNCT.sub("", text)
    match = _E_NOTATION.fullmatch(text)
    if match:
        text = f"{match.group(1)} \\times 10^{{{int(match.group(2))}}}"
    text = _NUMPY_FN.sub(r"\\\1", text)
    text = _BARE_POINT.sub(r"\1", text)
    text = _SUBSCRIPT_COMMAND.sub(lambda m: f"_{{{(m.group(1) or m.group(2)).strip()}}}", text)
    text = _BARE_SUBSCRIPT.sub(r"_{\1}", text)
    match = _VAR_INTERVAL.fullmatch(text)
    if match:
        text = f"{match.group(1)} \\in {match.group(2)}"
    text = _SPACED_I.sub(r"\1i", text)
    return _PRIME.sub(lambda m: "^{" + "\\prime" * len(m.group(1)) + "}", text)


@dataclass(frozen=True)
class Grading:
    """What grading needs from the task's config: the screen's bounds and math-verify's time limits."""

    limits: Mapping[str, float]  # screen.QUANTITIES name -> bound (task.screen_max_<name>)
    parse_timeout_s: int  # per math_verify.parse call (the gold and the answer are parsed apart)
    verify_timeout_s: int  # per comparison inside math_verify.verify

    @classmethod
    def of(cls, cfg) -> Grading:
        """From a ``MathTaskConfig`` (or anything with its ``screen_max_*`` and ``*_timeout_s`` fields)."""
        return cls({q: getattr(cfg, f"screen_max_{q}") for q in screen.QUANTITIES}, cfg.parse_timeout_s,
                   cfg.verify_timeout_s)


@functools.cache
def default_grading() -> Grading:
    """``Grading`` of the default ``MathTaskConfig`` (what ``grade`` uses when given none)."""
    from lpreg.harness.config import MathTaskConfig

    return Grading.of(MathTaskConfig())


def screen_reason(response: str, grading: Grading | None = None) -> str | None:
    """Why the last boxed answer of ``response`` is refused unparsed (``lpreg/tasks/screen.py``), or None."""
    pred = last_boxed(response)
    return None if pred is None else screen.reject(pred, (grading or default_grading()).limits)


def grade(response: str, answer: str, grading: Grading | None = None) -> float:
    """1.0 if the last boxed answer of ``response`` equals ``answer`` (string or math-verify equality), else 0.0.

    An answer the screen refuses scores 0 before anything parses it. Both sides are normalized
    (``normalize_answer``); an empty answer or an empty reference never scores. ``grading`` defaults to the
    default ``MathTaskConfig``'s.
    """
    grading = grading or default_grading()
    pred = last_boxed(response)
    if pred is None or screen.reject(pred, grading.limits) is not None:
        return 0.0
    gold = last_boxed(answer)
    return answers_match(normalize_answer(pred), normalize_answer(answer if gold is None else gold), grading)


def answers_match(pred: str, gold: str, grading: Grading | None = None) -> float:
    """1.0 if ``pred`` equals ``gold`` after removing whitespace or by ``math_verify.verify``; empty sides score 0.

    math-verify's time limits (``grading``) are signals, so they apply in the main thread only; in any other thread
    they are off (math-verify would refuse to run with them) and only the worker pool's budget bounds the call.
    """
    from math_verify import parse, verify

    pred_key, gold_key = "".join(pred.split()), "".join(gold.split())
    if not pred_key or not gold_key:
        return 0.0
    if pred_key == gold_key:
        return 1.0
    grading = grading or default_grading()
    main = threading.current_thread() is threading.main_thread()
    parse_s, verify_s = (grading.parse_timeout_s, grading.verify_timeout_s) if main else (None, None)
    try:
        return float(verify(parse(f"${gold}$", parsing_timeout=parse_s), parse(f"${pred}$", parsing_timeout=parse_s),
                            timeout_seconds=verify_s))
    except Exception:  # noqa: BLE001 -- sympy raises anything on odd input; the reference counts it as wrong
        return 0.0


def read_jsonl(path: str | Path, source: str | None = None) -> list[Problem]:
    """Problems from a JSONL file (a path or ``pkg://...``), gold answers normalized (``normalize_answer``).

    A clear error names the file and line of a bad row; a row whose answer is empty is an error.
    """
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"task data file {str(path)!r} does not exist; set task.train_file / task.eval_files to existing JSONL "
            "files, or download the full data with `python -m lpreg.data prepare --out DIR` (pip install 'lpreg[data]')")
    problems = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answer = normalize_answer(str(row["answer"]))
                problems.append(Problem(TEMPLATE.format(problem=row["problem"]), answer,
                                        source or row.get("data_source", path.stem)))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a JSON object with 'problem' and 'answer' ({err})") from err
            if not answer:
                raise ValueError(f"{path}:{n}: empty 'answer' (no response could be graded correct); fix or drop the row")
    if not problems:
        raise ValueError(f"task data file {path} holds no problems")
    return problems


@TASKS.register("math")
class MathTask(Task):
    name = "math"
    reward_preload = ("math_verify",)

    def __init__(self, cfg):
        self.cfg = cfg
        self.grading = Grading.of(cfg)
        train = read_jsonl(cfg.train_file)
        if cfg.n_validation >= len(train):
            raise ValueError(f"task.n_validation={cfg.n_validation} must leave training problems in {cfg.train_file} "
                             f"({len(train)} problems)")
        order = random.Random(0).sample(train, len(train))  # a fixed shuffle: validation never changes with max_train
        self._validation = [Problem(p.prompt, p.answer, "validation") for p in order[:cfg.n_validation]]
        self._train = order[cfg.n_validation:]
        if cfg.max_train:
            self._train = self._train[: cfg.max_train]
        self._eval = []
        for path in cfg.eval_files:
            problems = read_jsonl(path)
            if cfg.max_eval:
                problems = problems[: cfg.max_eval]
            source = problems[0].source
            sampled = source in cfg.sampled_sources
            self._eval.append(EvalSet(source, problems, "sampled" if sampled else "greedy",
                                      cfg.sampled_k if sampled else 1, cfg.sampled_temperature))
        unknown = sorted(set(cfg.sampled_sources) - {es.source for es in self._eval})
        if unknown:
            raise ValueError(f"task.sampled_sources names {unknown}, which no file of task.eval_files holds (its "
                             f"data_source values: {sorted(es.source for es in self._eval)})")

    def train_problems(self) -> list[Problem]:
        return self._train

    def eval_sets(self, split: str) -> list[EvalSet]:
        """``test``: the benchmarks of ``task.eval_files``; ``validation``: ``task.n_validation`` problems held out of
        the training file (greedy), so tuning never sees a benchmark."""
        if split == "validation" and not self._validation:
            raise ValueError("eval.split=validation, but task.n_validation=0 holds no validation problems: set it > 0")
        return self._eval if split == "test" else [EvalSet("validation", self._validation)]

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        return grade(response, problem.answer, self.grading)

    def reward_screen(self, response: str, problem: Problem, finished: bool) -> str | None:
        return screen_reason(response, self.grading)

    def reward_key(self, response: str, problem: Problem, finished: bool) -> object:
        return last_boxed(response), problem.answer  # grade() reads only the last box of the response

    def reward_warmup(self) -> None:
        grade("\\boxed{\\frac{1}{2}}", "0.5", self.grading)  # first parse + verify: about 0.2 s of set-up in a fresh process
