"""Reward grading cost on this machine: the time budget's evidence, and serial vs the worker pool.

    python benchmarks/rewards.py budget        # per-response grade time on the shipped benchmarks' gold answers
    python benchmarks/rewards.py throughput    # 2,048 legitimate + 2,048 adversarial responses, serial vs pool
    python benchmarks/rewards.py arithmetic    # the embedded task's reward phase: in process vs pool

``budget`` grades every gold answer of the shipped data (``lpreg/data/math/*.jsonl``) in three forms,
in this process (math-verify's own 5 s timeout active), and prints the distribution of seconds per response per
form: ``exact`` (``\\boxed{gold}``: the string fast path), ``equivalent`` (``\\boxed{{gold}}`` with ``\\frac`` as
``\\dfrac``: a different string, so parse + verify of two equal expressions), ``wrong`` (another problem's gold:
parse + verify of two different expressions). ``task.reward_timeout_s`` is chosen from its maximum.

``throughput`` draws ``--n`` (2,048) legitimate responses (the three forms of random golds) and ``--n-adversarial``
(2,048) distinct adversarial ones (towers of exponents, factorials of huge numbers, deep nesting, 10,000-character
boxes, unbalanced braces, binary garbage, empty boxes) and grades them with the cache off: serially in process (the
old path; on the adversarial set only the first ``--serial-adversarial`` responses, since each slow one costs
math-verify's 5 s) and with the pool at 1 and 2 workers (``--workers`` picks). Printed as a markdown table.
Distinct adversarial responses are the pool's worst case: each slow one holds a worker for the whole budget, so the
time is about slow × budget / workers.

``arithmetic`` times one reward phase of the embedded default (32 prompts x 8 samples = 256 responses, half of them
correct), repeated ``--repeats`` times: in process vs the pool. This decides
``ArithmeticTaskConfig.reward_workers``.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from lpreg.config import MathTaskConfig
from lpreg.data import MATH_DATA, resolve_path
from lpreg.rewards import RewardGrader
from lpreg.tasks import Problem
from lpreg.tasks.math import MathTask, grade, read_jsonl

REPEAT_SLOWEST, REPEATS = 20, 3  # the budget section re-times its slowest responses to separate cost from load
DATA = resolve_path(MATH_DATA)  # the math data shipped in the package


def golds() -> list[str]:
    """Every reference answer of the shipped files, in file order."""
    paths = sorted(DATA.glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no *.jsonl in {DATA}: reinstall lpreg (pip install -e .)")
    return [p.answer for path in paths for p in read_jsonl(path)]


def forms(answers: list[str], seed: int = 0) -> list[tuple[str, str, str, float]]:
    """``(form, response, gold, expected)`` for each gold in the three forms (``wrong`` has expected 0)."""
    rng = random.Random(seed)
    others = answers[:]
    rng.shuffle(others)
    out = []
    for gold, other in zip(answers, others):
        out.append(("exact", f"\\boxed{{{gold}}}", gold, 1.0))
        out.append(("equivalent", f"\\boxed{{{{{gold.replace(chr(92) + 'frac', chr(92) + 'dfrac')}}}}}", gold, 1.0))
        if "".join(other.split()) != "".join(gold.split()):
            out.append(("wrong", f"\\boxed{{{other}}}", gold, 0.0))
    return out


def adversarial(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pathological responses, cycling over the kinds of issue 18 with varied numbers."""
    rng = random.Random(seed)
    kinds = [
        lambda k: f"\\boxed{{9^{{9^{{9^{{{99 + k}}}}}}}}}",
        lambda k: f"\\boxed{{10^{{10^{{{10 + k}}}}}!}}",
        lambda k: f"\\boxed{{{'(' * (200 + k % 50)}{k}{')' * (200 + k % 50)}}}",
        lambda k: f"\\boxed{{{'{' * (100 + k % 50)}{k}{'}' * (100 + k % 50)}}}",
        lambda k: f"\\boxed{{{2 + k}^{{{2 + k}^{{{2 + k}^{{{2 + k}^{{{2 + k}}}}}}}}}}}",
        lambda k: f"\\boxed{{{10**12 + k}!}}",
        lambda k: "\\boxed{" + "".join(rng.choice("x+1*^") for _ in range(10_000)) + f"{k}}}",
        lambda k: f"\\boxed{{{{{{{k}",
        lambda k: "\\boxed{" + bytes(rng.randrange(256) for _ in range(200)).decode("latin-1") + f"{k}}}",
        lambda k: "\\boxed{}" + " " * k,
    ]
    return [kinds[i % len(kinds)](i // len(kinds)) for i in range(n)]


def quantiles(xs: list[float]) -> str:
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return (f"n={len(xs)} median={q(0.5) * 1e3:.1f} ms  p99={q(0.99) * 1e3:.1f} ms  p99.9={q(0.999) * 1e3:.1f} ms  "
            f"max={xs[-1] * 1e3:.1f} ms")


def budget() -> None:
    grade("\\boxed{\\frac{1}{2}}", "0.5")  # imports and first-call set-up, as a worker's warm-up does
    times: dict[str, list[tuple[float, str, str]]] = {}
    mismatch = 0
    for form, response, gold, expected in forms(golds()):
        t0 = time.perf_counter()
        score = grade(response, gold)
        times.setdefault(form, []).append((time.perf_counter() - t0, response, gold))
        mismatch += score != expected
    for form, rows in times.items():
        print(f"{form:<10} {quantiles([t for t, _, _ in rows])}")
        for t, response, gold in sorted(rows, reverse=True)[:3]:
            print(f"    {t * 1e3:8.1f} ms  gold={gold[:60]!r}  response={response[:60]!r}")
    print(f"all forms  {quantiles([t for rows in times.values() for t, _, _ in rows])}")
    slowest = sorted((row for rows in times.values() for row in rows), reverse=True)[:REPEAT_SLOWEST]
    print(f"the {REPEAT_SLOWEST} slowest, graded {REPEATS} more times each (first pass; repeats, ms):")
    for t, response, gold in slowest:
        again = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            grade(response, gold)
            again.append(time.perf_counter() - t0)
        print(f"    {t * 1e3:7.1f}; {' '.join(f'{x * 1e3:7.1f}' for x in again)}   gold={gold[:50]!r}")
    print(f"responses whose score differs from the form's expected score: {mismatch}")


def run(responses: list[str], gold_list: list[str], workers: int, timeout_s: float) -> tuple[float, list[float], list]:
    cfg = MathTaskConfig(train_file=str(DATA / "aime24.jsonl"), reward_workers=workers, reward_timeout_s=timeout_s,
                         reward_cache_size=0)
    task = MathTask(cfg)
    problems = [Problem("", g, "bench") for g in gold_list]
    with RewardGrader(task, cfg) as grader:
        grader.wait_ready()
        t0 = time.perf_counter()
        grades = grader.grade(responses, problems, [True] * len(responses))
        return time.perf_counter() - t0, grades.rewards, grades.timed_out


def throughput(n: int, n_adversarial: int, serial_adversarial: int, timeout_s: float, workers: list[int]) -> None:
    rng = random.Random(0)
    legit = rng.sample(forms(golds()), n)
    adv = adversarial(n_adversarial)
    sets = {"legitimate": ([r for _, r, _, _ in legit], [g for _, _, g, _ in legit]),
            "adversarial": (adv, ["42"] * n_adversarial)}
    print("| responses | grader | graded | seconds | ms / response | timeouts | score = expected |")
    print("|---|---|---:|---:|---:|---:|---:|")
    expected = {"legitimate": [e for _, _, _, e in legit], "adversarial": [0.0] * n_adversarial}
    cut_here: list[tuple[str, str, str]] = []
    for name, (responses, gold_list) in sets.items():
        size = len(responses)
        for w in workers:
            label = "serial (in process)" if w == 0 else f"pool, {w} worker{'s' * (w > 1)}"
            count = min(serial_adversarial, size) if name == "adversarial" and w == 0 else size
            secs, rewards, cut = run(responses[:count], gold_list[:count], w, timeout_s)
            ok = sum(r == e for r, e in zip(rewards, expected[name]))
            print(f"| {name} | {label} | {count} | {secs:.1f} | {secs / count * 1e3:.1f} | {len(cut)} | {ok}/{count} |",
                  flush=True)
            if name == "legitimate":
                cut_here.extend((label, responses[i], gold_list[i]) for i in cut)
    for label, response, gold in cut_here:
        print(f"legitimate response over the budget ({label}): {response[:100]!r} against gold {gold[:60]!r}")


def arithmetic(repeats: int) -> None:
    from lpreg.config import ArithmeticTaskConfig
    from lpreg.tasks.arithmetic import Arithmetic

    task = Arithmetic(ArithmeticTaskConfig())
    problems = [p for p in task.train_problems()[:32] for _ in range(8)]
    texts = [p.answer if i % 2 else p.answer[::-1] + "0" for i, p in enumerate(problems)]
    print("| grader | ms per 256 responses (median) | min | max |")
    print("|---|---:|---:|---:|")
    for label, workers, cache in [("in process, cache on (the default)", 0, ArithmeticTaskConfig.reward_cache_size),
                                  ("in process, cache off", 0, 0), ("pool, 1 worker, cache off", 1, 0),
                                  ("pool, 2 workers, cache off", 2, 0)]:
        cfg = ArithmeticTaskConfig(reward_workers=workers, reward_cache_size=cache)
        with RewardGrader(task, cfg) as grader:
            grader.wait_ready()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                grader.grade(texts, problems, [True] * len(texts))
                times.append(time.perf_counter() - t0)
        times.sort()
        print(f"| {label} | {times[len(times) // 2] * 1e3:.2f} | {times[0] * 1e3:.2f} | {times[-1] * 1e3:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=["budget", "throughput", "arithmetic"])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--n-adversarial", type=int, default=2048)
    ap.add_argument("--serial-adversarial", type=int, default=100)
    ap.add_argument("--workers", default="0,1,2", help="graders to compare: 0 = serial in process, k = pool of k")
    ap.add_argument("--timeout-s", type=float, default=MathTaskConfig.reward_timeout_s)
    args = ap.parse_args()
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.1f}")
    if args.section == "budget":
        budget()
    elif args.section == "arithmetic":
        arithmetic(args.repeats)
    else:
        throughput(args.n, args.n_adversarial, args.serial_adversarial, args.timeout_s,
                   [int(w) for w in args.workers.split(",")])


if __name__ == "__main__":
    main()
