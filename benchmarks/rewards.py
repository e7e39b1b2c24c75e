"""Reward grading cost on this machine: the screen's and time limits' evidence, and the old path against the new.

    python benchmarks/rewards.py budget        # gold maxima of the screen's quantities; grade time per phase
    python benchmarks/rewards.py throughput    # legitimate and adversarial responses, old path vs new, serial vs pool
    python benchmarks/rewards.py arithmetic    # the embedded task's reward phase: in process vs pool

``budget`` first measures the screen's quantities (``lpreg/tasks/screen.py``) on every answer a legitimate
response may box: each gold of the shipped data (``lpreg/data/math/*.jsonl``) raw and as loaded, the boxes of the
three forms below, and every rewrite ``scripts/gold_sweep.py`` grades; it prints each quantity's maximum (and the
answer that reaches it) beside the configured bound ``task.screen_max_*``, and how many of those answers the screen
refuses (must be 0). Then it grades every gold in three forms in this process and times each phase apart, with
math-verify at its own 5 s defaults so that the true cost shows: ``exact`` (``\\boxed{gold}``: the string fast
path), ``equivalent`` (``\\boxed{{gold}}`` with ``\\frac`` as ``\\dfrac``: a different string, so parse + verify of
two equal expressions), ``wrong`` (another problem's gold: parse + verify of two different expressions). The
phases' maxima are the evidence for ``task.parse_timeout_s``, ``task.verify_timeout_s`` and
``task.reward_timeout_s``; last, every form is graded again with the configured limits, and the responses whose
score differs from the expected one are counted both ways (the limits must not add any).

``throughput`` grades sets of responses with the cache off, by two paths in the same run: ``old`` (the screen off,
i.e. every bound infinite, math-verify at its 5 s defaults, no batch deadline: the grading before the screen) and
``new`` (the defaults of ``MathTaskConfig``), serially in process (each such row in a fresh process, warmed up like
a worker, so that no row inherits sympy's caches from another) and with a fresh pool of ``--workers`` workers. The
legitimate set is graded old, new, new, old at each grader, so that both paths see the same drift of the load, and
every row also reports the CPU seconds the call used (the grading process and the pool's workers, from ``/proc``;
"-" where a worker was replaced, since it took its count along), which a shared machine's load changes far less
than wall time. ``--sets`` picks the sets. The sets:
``--n`` (2,048) ``legitimate`` responses (the three forms of random golds); ``--n-adversarial`` (2,048) distinct
``adversarial`` ones of ``ADVERSARIAL`` (towers of exponents, factorials of huge numbers, deep nesting,
10,000-character boxes, unbalanced braces, binary garbage, empty boxes); as many of the further families of
``FAMILIES`` (``\\cdot`` exponents, huge binomials and ``\\Gamma``, ``\\underbrace``, ``\\sqrt``, ``\\frac`` and
``\\sin(`` nesting, 5,000 digits, big matrices, ``\\left(`` storms, unicode junk, e-notation, unbraced towers);
and ``--n-within`` (64) ``within bounds`` responses of ``WITHIN_BOUNDS``, slow for math-verify but inside every
bound, which only math-verify's limits and the pool's budget stop. The old path grades the adversarial sets only in
part (``--n-old-adversarial``, 64, with the pool; each slow response holds a worker for the whole budget). Last,
``--n`` within-bounds responses are graded by the pool with a batch deadline of ``--deadline-s`` (20 s), which
shows the bound a step's grading cannot pass. Printed as a markdown table.

``arithmetic`` times one reward phase of the embedded default (32 prompts x 8 samples = 256 responses, half of them
correct), repeated ``--repeats`` times: in process vs the pool. This decides
``ArithmeticTaskConfig.reward_workers``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import multiprocessing as mp
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lpreg.data import MATH_DATA, resolve_path
from lpreg.harness.config import MathTaskConfig
from lpreg.rewards import DEADLINE, REJECTED, TIMEOUT, RewardGrader
from lpreg.tasks import Problem, screen
from lpreg.tasks.math import Grading, MathTask, grade, last_boxed, normalize_answer, read_jsonl

DATA = resolve_path(MATH_DATA)  # the math data shipped in the package
SWEEP = Path(__file__).resolve().parents[1] / "scripts" / "gold_sweep.py"
MATH_VERIFY_DEFAULT_S = 5  # math-verify's own parse and verify timeouts: the old path's only limits in process
# The old path: no screen (every bound infinite), math-verify's defaults, no batch deadline.
OLD_PATH = {**{f"screen_max_{q}": math.inf for q in screen.QUANTITIES}, "parse_timeout_s": MATH_VERIFY_DEFAULT_S,
            "verify_timeout_s": MATH_VERIFY_DEFAULT_S, "reward_batch_deadline_s": None}


def golds() -> list[str]:
    """Every reference answer of the shipped files as loaded, in file order."""
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


@functools.cache
def sweep_module():
    """``scripts/gold_sweep.py`` as a module (its ``rewrites`` are the forms a correct model may write)."""
    spec = importlib.util.spec_from_file_location("gold_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def legitimate_answers() -> list[tuple[str, str]]:
    """``(where, answer)`` for every answer a legitimate response may box: each shipped gold raw and as loaded, the
    boxes of ``forms``, and every rewrite of the gold sweep. The screen must refuse none of them."""
    rows = [json.loads(line) for path in sorted(DATA.glob("*.jsonl")) for line in path.read_text().splitlines()
            if line.strip()]
    out = [(where, text) for row in rows for where, text in
           [("raw gold", str(row["answer"])), ("loaded gold", normalize_answer(str(row["answer"])))]]
    out += [(f"{form} form", last_boxed(response)) for form, response, _, _ in forms(golds())]
    rewrites = sweep_module().rewrites
    out += [(f"sweep: {name}", text) for row in rows for name, text in rewrites(str(row["answer"]), row).items()]
    return out


# The adversarial kinds of the throughput set (measured before the screen existed), each k-th one with varied numbers.
ADVERSARIAL = [
    ("tower of exponents", lambda k, rng: f"\\boxed{{9^{{9^{{9^{{{99 + k}}}}}}}}}"),
    ("factorial of a tower", lambda k, rng: f"\\boxed{{10^{{10^{{{10 + k}}}}}!}}"),
    ("200 nested parentheses", lambda k, rng: f"\\boxed{{{'(' * (200 + k % 50)}{k}{')' * (200 + k % 50)}}}"),
    ("100 nested braces", lambda k, rng: f"\\boxed{{{'{' * (100 + k % 50)}{k}{'}' * (100 + k % 50)}}}"),
    ("five-high tower", lambda k, rng: f"\\boxed{{{2 + k}^{{{2 + k}^{{{2 + k}^{{{2 + k}^{{{2 + k}}}}}}}}}}}"),
    ("factorial of 10^12", lambda k, rng: f"\\boxed{{{10**12 + k}!}}"),
    ("10,000-character box", lambda k, rng: "\\boxed{" + "".join(rng.choice("x+1*^") for _ in range(10_000)) + f"{k}}}"),
    ("unbalanced braces", lambda k, rng: f"\\boxed{{{{{{{k}"),
    ("binary garbage", lambda k, rng: "\\boxed{" + bytes(rng.randrange(256) for _ in range(200)).decode("latin-1")
     + f"{k}}}"),
    ("empty box", lambda k, rng: "\\boxed{}" + " " * k),
]
# Further families, each refused by the screen (test_screen.py checks every one).
FAMILIES = [
    ("exponent written with \\cdot", lambda k, rng: f"\\boxed{{2^{{9999 \\cdot 9999 \\cdot {k + 2}}}}}"),
    ("exponent written with \\times", lambda k, rng: f"\\boxed{{x^{{10^{{3}} \\times 10^{{3}} \\times {k + 1}}}}}"),
    ("binomial of huge numbers", lambda k, rng: f"\\boxed{{\\binom{{10^{{12}}+{k}}}{{5 \\cdot 10^{{11}}}}}}"),
    ("\\choose of huge numbers", lambda k, rng: f"\\boxed{{{{{10**9 + k} \\choose 3}}}}"),
    ("\\Gamma of a huge number", lambda k, rng: f"\\boxed{{\\Gamma(10^{{12}}+{k})}}"),
    ("double factorial", lambda k, rng: f"\\boxed{{({10**6 + k})!!}}"),
    ("\\underbrace nesting", lambda k, rng: "\\boxed{" + "\\underbrace{" * (20 + k % 9) + str(k) + "}_{a}" * (20 + k % 9)
     + "}"),
    ("run of nested \\sqrt", lambda k, rng: "\\boxed{" + "\\sqrt{" * (30 + k % 9) + str(k) + "}" * (30 + k % 9) + "}"),
    ("repeated \\frac nesting", lambda k, rng: "\\boxed{" + "\\frac{1}{" * (30 + k % 9) + str(k + 2) + "}" * (30 + k % 9)
     + "}"),
    ("nested \\sin(", lambda k, rng: "\\boxed{" + "\\sin(" * (40 + k % 9) + str(k) + ")" * (40 + k % 9) + "}"),
    ("\\left( storm", lambda k, rng: "\\boxed{" + "\\left(" * (100 + k % 50) + str(k) + "}"),
    ("5,000 digits", lambda k, rng: "\\boxed{" + "7" * 5000 + f"{k}}}"),
    ("200-digit number", lambda k, rng: "\\boxed{" + "9" * 200 + f"{k}}}"),
    ("20 x 20 matrix", lambda k, rng: "\\boxed{\\begin{pmatrix}" + " \\\\ ".join(
        " & ".join(str(k + i + j) for j in range(20)) for i in range(20)) + "\\end{pmatrix}}"),
    ("unicode junk", lambda k, rng: "\\boxed{" + "".join(chr(rng.randrange(0x2200, 0x2300)) for _ in range(40))
     + f"{k}}}"),
    ("control characters", lambda k, rng: "\\boxed{" + "".join(chr(rng.randrange(1, 32)) for _ in range(40)) + f"{k}}}"),
    ("e-notation of a huge power", lambda k, rng: f"\\boxed{{1e{99999999 - k}}}"),
    ("unbraced tower", lambda k, rng: "\\boxed{" + "x^" * (10 + k % 40) + f"{k}}}"),
    ("python power", lambda k, rng: f"\\boxed{{9**9**9**{k + 2}}}"),
    ("long sum", lambda k, rng: "\\boxed{" + "1+" * (1200 + k) + "1}"),
]
# Inside every bound, yet slow for math-verify: only its time limits (and the pool's budget) stop these.
WITHIN_BOUNDS = [
    ("power of a sum", lambda k, rng: f"\\boxed{{(x+{k + 1})^{{1000}}}}"),
    ("10 nested parentheses", lambda k, rng: "\\boxed{" + "(" * 10 + str(k) + ")" * 10 + "}"),
    ("10 nested \\frac", lambda k, rng: "\\boxed{" + "\\frac{1}{" * 9 + str(k + 2) + "}" * 9 + "}"),
    ("long sum of 400 terms", lambda k, rng: "\\boxed{" + "1+" * 400 + f"{k}}}"),
]


def responses_of(families, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct responses cycling over ``families`` (``(name, make)`` with ``make(k, rng)``)."""
    rng = random.Random(seed)
    return [families[i % len(families)][1](i // len(families), rng) for i in range(n)]


def quantiles(xs: list[float]) -> str:
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return (f"n={len(xs)} median={q(0.5) * 1e3:.1f} ms  p99={q(0.99) * 1e3:.1f} ms  p99.9={q(0.999) * 1e3:.1f} ms  "
            f"max={xs[-1] * 1e3:.1f} ms")


def screen_maxima() -> None:
    """The gold maxima of every screened quantity beside its configured bound."""
    answers = legitimate_answers()
    limits = Grading.of(MathTaskConfig()).limits
    t0 = time.perf_counter()
    measures = [screen.measure(text) for _, text in answers]
    per = (time.perf_counter() - t0) / len(answers)
    print(f"screen: {len(answers)} legitimate answers measured, {per * 1e6:.0f} us each")
    print("| quantity | gold max | reached by | bound (task.screen_max_*) | bound / max |")
    print("|---|---:|---|---:|---:|")
    for q in screen.QUANTITIES:
        k = max(range(len(answers)), key=lambda j: measures[j][q])
        top, bound = measures[k][q], limits[q]
        ratio = f"{bound / top:.1f}" if top else "-"
        print(f"| {q} | {top:g} | {answers[k][0]}: `{answers[k][1][:40]}` | {bound:g} | {ratio} |")
    refused = [(w, t) for w, t in answers if screen.reject(t, limits)]
    print(f"legitimate answers the screen refuses: {len(refused)} of {len(answers)}")
    for where, text in refused:
        print(f"    {where}: {text[:80]!r}: {screen.reject(text, limits)}")


def phase_times(response: str, gold: str) -> tuple[float, float, float]:
    """Seconds to parse the gold, parse the answer, and verify, with math-verify's own 5 s limits."""
    from math_verify import parse, verify

    pred = normalize_answer(last_boxed(response))
    if "".join(pred.split()) == "".join(gold.split()):
        return 0.0, 0.0, 0.0  # the string fast path: nothing is parsed
    t0 = time.perf_counter()
    g = parse(f"${gold}$", parsing_timeout=MATH_VERIFY_DEFAULT_S)
    t1 = time.perf_counter()
    p = parse(f"${pred}$", parsing_timeout=MATH_VERIFY_DEFAULT_S)
    t2 = time.perf_counter()
    verify(g, p, timeout_seconds=MATH_VERIFY_DEFAULT_S)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def budget() -> None:
    screen_maxima()
    old = Grading.of(MathTaskConfig(**{k: v for k, v in OLD_PATH.items() if k != "reward_batch_deadline_s"}))
    new = Grading.of(MathTaskConfig())
    grade("\\boxed{\\frac{1}{2}}", "0.5", new)  # imports and first-call set-up, as a worker's warm-up does
    cases = forms(golds())
    phases: dict[str, dict[str, list[tuple[float, str, str]]]] = {}
    for form, response, gold, _ in cases:
        for name, t in zip(("parse gold", "parse answer", "verify"), phase_times(response, gold)):
            phases.setdefault(name, {}).setdefault(form, []).append((t, response, gold))
    print(f"\nseconds per phase, math-verify at its {MATH_VERIFY_DEFAULT_S} s defaults (load average "
          f"{os.getloadavg()[0]:.1f}); 0 where the string fast path needs no parse:")
    for name, by_form in phases.items():
        for form, rows in by_form.items():
            print(f"{name:<13} {form:<10} {quantiles([t for t, _, _ in rows])}")
        for t, response, gold in sorted((r for rows in by_form.values() for r in rows), reverse=True)[:3]:
            print(f"    {t * 1e3:8.1f} ms  gold={gold[:50]!r}  response={response[:50]!r}")
    for label, grading in (("math-verify's 5 s defaults, no screen", old), ("the configured limits and screen", new)):
        times, mismatch = [], []
        for form, response, gold, expected in cases:
            t0 = time.perf_counter()
            score = grade(response, gold, grading)
            times.append(time.perf_counter() - t0)
            if score != expected:
                mismatch.append((form, response, gold))
        print(f"\ngraded with {label} (load average {os.getloadavg()[0]:.1f}): {quantiles(times)}; "
              f"score differs from the form's expected score: {len(mismatch)}")
        for form, response, gold in mismatch:
            print(f"    {form}: {response[:60]!r} against {gold[:40]!r}")


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far (Linux ``/proc``; 0 for one gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _grade_all(responses: list[str], gold_list: list[str], workers: int, fields: dict) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and the pool's workers, ``Grades``) of one ``grade`` call."""
    cfg = MathTaskConfig(train_file=str(DATA / "aime24.jsonl"), reward_workers=workers, reward_cache_size=0, **fields)
    task = MathTask(cfg)
    problems = [Problem("", g, "bench") for g in gold_list]
    with RewardGrader(task, cfg) as grader:
        grader.wait_ready()
        if not workers:
            task.reward_warmup()  # what each pool worker does before it takes work
        pids = grader.pool.pids() if grader.pool else []  # a worker replaced during the call takes its CPU time along
        c0, t0 = time.process_time() + cpu_seconds(pids), time.perf_counter()
        grades = grader.grade(responses, problems, [True] * len(responses))
        wall = time.perf_counter() - t0
        return wall, time.process_time() + cpu_seconds(pids) - c0, grades


def run(responses: list[str], gold_list: list[str], workers: int, **fields) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds and ``Grades`` of one call; serial grading (``workers`` 0) runs in a fresh process
    of its own, as the pool's workers are fresh, so that no path inherits sympy's caches from an earlier row."""
    if workers:
        return _grade_all(responses, gold_list, workers, fields)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(_grade_all, responses, gold_list, 0, fields).result()


def throughput(n: int, n_adversarial: int, n_within: int, n_old_adversarial: int, workers: int, deadline_s: float,
               timeout_s: float, only: set[str]) -> None:
    rng = random.Random(0)
    legit = rng.sample(forms(golds()), n)
    sets = {"legitimate": ([r for _, r, _, _ in legit], [g for _, _, g, _ in legit], [e for _, _, _, e in legit]),
            "adversarial": (responses_of(ADVERSARIAL, n_adversarial), ["42"] * n_adversarial, [0.0] * n_adversarial),
            "further families": (responses_of(FAMILIES, n_adversarial), ["42"] * n_adversarial, [0.0] * n_adversarial),
            "within bounds": (responses_of(WITHIN_BOUNDS, n_within), ["42"] * n_within, [0.0] * n_within)}
    paths = {"old": OLD_PATH, "new": {}}
    print("| responses | path | grader | graded | seconds | ms / response | CPU seconds | rejected | timeouts | "
          "deadline cut | score = expected | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(name, path, w, count, **extra):
        if name not in only:
            return None
        responses, gold_list, expected = (x[:count] for x in sets[name])
        fields = {"reward_timeout_s": timeout_s, **paths[path], **extra}
        secs, cpu, grades = run(responses, gold_list, w, **fields)
        ok = sum(r == e for r, e in zip(grades.rewards, expected))
        label = "serial (in process)" if w == 0 else f"pool, {w} worker{'s' * (w > 1)}"
        if "reward_batch_deadline_s" in extra:
            label += f", deadline {extra['reward_batch_deadline_s']:g} s"
        counts = [len(grades.flagged(kind)) for kind in (REJECTED, TIMEOUT, DEADLINE)]
        cpu = f"{cpu:.1f}" if not grades.restarts else "-"  # a replaced worker took its CPU time along
        print(f"| {name} | {path} | {label} | {count} | {secs:.1f} | {secs / count * 1e3:.2f} | {cpu} | "
              f"{' | '.join(map(str, counts))} | {ok}/{count} | {os.getloadavg()[0]:.1f} |", flush=True)
        return grades

    cut = []
    for w in (0, workers):  # old, new, new, old: both paths see the same drift of the machine's load
        for path in ("old", "new", "new", "old"):
            grades = row("legitimate", path, w, n)
            cut += [(path, w, sets["legitimate"][0][i]) for i in (grades.timed_out if grades else [])]
    for name in ("adversarial", "further families"):
        row(name, "old", workers, min(n_old_adversarial, n_adversarial))
        row(name, "new", 0, n_adversarial)
        row(name, "new", workers, n_adversarial)
    row("within bounds", "old", workers, n_within)
    row("within bounds", "new", workers, n_within)
    sets["within bounds"] = (responses_of(WITHIN_BOUNDS, n), ["42"] * n, [0.0] * n)
    row("within bounds", "new", workers, n, reward_batch_deadline_s=deadline_s)
    for path, w, response in cut:
        print(f"legitimate response over the budget ({path} path, {w} workers): {response[:100]!r}")


def arithmetic(repeats: int) -> None:
    from lpreg.harness.config import ArithmeticTaskConfig
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
    ap.add_argument("--n-within", type=int, default=64)
    ap.add_argument("--n-old-adversarial", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="the pool's size (the serial rows grade in process)")
    ap.add_argument("--deadline-s", type=float, default=20.0, help="batch deadline of the last throughput row")
    ap.add_argument("--timeout-s", type=float, default=MathTaskConfig.reward_timeout_s)
    ap.add_argument("--sets", default="legitimate,adversarial,further families,within bounds",
                    help="throughput: the sets to grade, comma-separated")
    args = ap.parse_args()
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.1f}")
    if args.section == "budget":
        budget()
    elif args.section == "arithmetic":
        arithmetic(args.repeats)
    else:
        throughput(args.n, args.n_adversarial, args.n_within, args.n_old_adversarial, args.workers, args.deadline_s,
                   args.timeout_s, set(args.sets.split(",")))


if __name__ == "__main__":
    main()
