"""Math word problems from JSONL files (the paper's setting): boxed answers graded with math-verify.

Rows need ``problem`` and ``answer`` (``data_source`` optional; see ``../shared/data/math/README.md`` for the
files the paper evaluates on). Prompts use the R1-Zero template of the reference code. Grading follows spec §6 in
spirit: the answer is the content of the **last** ``\\boxed{...}`` (brace-balanced); no box scores 0; otherwise the
answer is correct if it equals the reference after whitespace normalization or if ``math_verify.verify`` says the
two parse to equal expressions. The extraction is our own ~15 lines rather than math-verify's extractor because the
reference only counts the last box (math-verify would also accept unboxed answers). The reference's
Hendrycks/sympy cascade (prime_math) is not reproduced; math-verify is its last fallback and covers the same
equivalences in our tests. Evaluation protocol per source: ``task.sampled_sources`` (AIME in the paper) are scored
avg@k at T=0.6; the rest greedily.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lpreg.tasks import TASKS, EvalSet, Problem, Task

TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The final answer is put in \\boxed{{}}.\nUser: {problem}\nAssistant: Let me solve this step by step.\n<think>"
)


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}`` in ``text``, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def grade(response: str, answer: str) -> float:
    """1.0 if the last boxed answer of ``response`` equals ``answer`` (string or math-verify equality)."""
    from math_verify import parse, verify

    pred = last_boxed(response)
    if pred is None:
        return 0.0
    gold = last_boxed(answer) or answer
    if "".join(pred.split()) == "".join(gold.split()):
        return 1.0
    try:
        return float(verify(parse(f"${gold}$"), parse(f"${pred}$")))
    except Exception:  # noqa: BLE001 -- sympy raises anything on odd input; the reference counts it as wrong
        return 0.0


def read_jsonl(path: str | Path, source: str | None = None) -> list[Problem]:
    """Problems from a JSONL file; a clear error names the file and line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task data file {str(path)!r} does not exist; set task.train_file / task.eval_files")
    problems = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(
                    Problem(TEMPLATE.format(problem=row["problem"]), str(row["answer"]),
                            source or row.get("data_source", path.stem))
                )
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a JSON object with 'problem' and 'answer' ({err})") from err
    if not problems:
        raise ValueError(f"task data file {path} holds no problems")
    return problems


@TASKS.register("math")
class MathTask(Task):
    name = "math"
    reward_preload = ("math_verify",)

    def __init__(self, cfg):
        self.cfg = cfg
        self._train = read_jsonl(cfg.train_file)
        if cfg.max_train:
            self._train = random.Random(0).sample(self._train, min(cfg.max_train, len(self._train)))
        self._eval = []
        for path in cfg.eval_files:
            problems = read_jsonl(path)
            if cfg.max_eval:
                problems = problems[: cfg.max_eval]
            source = problems[0].source
            sampled = source in cfg.sampled_sources
            self._eval.append(EvalSet(source, problems, "sampled" if sampled else "greedy",
                                      cfg.sampled_k if sampled else 1, cfg.sampled_temperature))

    def train_problems(self) -> list[Problem]:
        return self._train

    def eval_sets(self) -> list[EvalSet]:
        return self._eval

    def reward(self, response: str, problem: Problem, finished: bool) -> float:
        return grade(response, problem.answer)

    def reward_key(self, response: str, problem: Problem, finished: bool) -> object:
        return last_boxed(response), problem.answer  # grade() reads only the last box of the response

    def reward_warmup(self) -> None:
        grade("\\boxed{\\frac{1}{2}}", "0.5")  # first parse + verify: about 0.2 s of set-up in a fresh process

    def cache_key(self) -> str:
        return f"math-{Path(self.cfg.train_file).name}"
