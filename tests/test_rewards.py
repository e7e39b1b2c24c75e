"""The reward call (lpreg/rewards.py): the screen refuses adversarial answers before the pool, what passes it is cut
at the budget, a call ends at its deadline, workers are replaced, the cache counts hits, and no grading process
outlives its grader. Times are bounded generously ("no hang"); the speed itself is measured by
``benchmarks/rewards.py``.
"""

import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import FAST, compose_cfg

from lpreg.core.metrics import METRICS, is_runtime
from lpreg.harness.config import ArithmeticTaskConfig, MathTaskConfig
from lpreg.rewards import DEADLINE, REJECTED, RewardCache, RewardGrader
from lpreg.tasks import Problem, Task, screen
from lpreg.tasks.arithmetic import Arithmetic
from lpreg.tasks.math import MathTask

BUDGET_S = MathTaskConfig.reward_timeout_s
# Grading as it was before the screen: no bound, math-verify's own 5 s limits. What the budget alone must hold.
NO_SCREEN = {**{f"screen_max_{q}": math.inf for q in screen.QUANTITIES}, "parse_timeout_s": 5, "verify_timeout_s": 5}
# Correct responses (gold, response): the exact string and forms that need math-verify.
CORRECT = [("204", "I get \\boxed{204}"), ("\\frac{1}{2}", "\\boxed{0.5}"), ("\\frac{1}{2}", "\\boxed{\\dfrac12}"),
           ("\\left( 3, \\frac{\\pi}{2} \\right)", "so \\boxed{(3,\\frac{\\pi}{2})}"), ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
           ("x^2+1", "\\boxed{1+x^2}"), ("70", "\\boxed{ 70 }"), ("[1,3)", "\\boxed{[1, 3)}")]
# Each takes math-verify's full 5 s in process without the screen (measured): the budget must cut them.
SLOW = ["\\boxed{9^{9^{9^{99}}}}", "\\boxed{10^{10^{10}}!}"]
OTHER_ADVERSARIAL = [
    "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}",  # 200 nested parentheses
    "\\boxed{" + "{" * 100 + "3" + "}" * 100 + "}",  # deep brace nesting
    "\\boxed{" + "\\sqrt{" * 50 + "2" + "}" * 50 + "}",  # deep nesting of functions
    "\\boxed{10^{10^{10^{10}}}}",  # huge exponent
    "\\boxed{(10^{100})!}",  # factorial of a huge number
    "\\boxed{" + "x+1*" * 2500 + "}",  # a 10,000-character box
    "\\boxed{{{3",  # unbalanced braces
    "\\boxed{\x00\xff\x01\ufffd\x7f garbage}",  # binary garbage
    "\\boxed{}",  # an empty box
]


class SleepyTask(Task):
    """A reward that takes as many seconds as the response's first word says, then scores 1."""

    name = "sleepy"

    def reward(self, response, problem, finished):
        time.sleep(float(response.split()[0]))
        return 1.0


class ExitingTask(Task):
    """Arithmetic-like reward whose worker dies (os._exit) on the response "crash"."""

    name = "exiting"

    def reward(self, response, problem, finished):
        if response == "crash":
            os._exit(3)
        return float(response == problem.answer)


def math_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    return MathTask(MathTaskConfig(train_file=str(path), n_validation=0))


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    """Two workers grading math without the screen, so that adversarial answers reach math-verify."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    cfg = MathTaskConfig(train_file=str(path), n_validation=0, reward_workers=2, **NO_SCREEN)
    with RewardGrader(MathTask(cfg), cfg) as g:
        g.wait_ready()
        yield g


def run_with_timeout(fn, timeout_s):
    """``fn()`` in a thread; fails the test (instead of hanging it) after ``timeout_s``."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(fn).result(timeout=timeout_s)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_adversarial_rollout_is_cut_at_the_budget_and_correct_answers_score_one(grader):
    adversarial = SLOW + OTHER_ADVERSARIAL
    texts = [r for _, r in CORRECT] + adversarial
    golds = [g for g, _ in CORRECT] + ["42"] * len(adversarial)
    order = list(range(len(texts)))[::3] + list(range(len(texts)))[1::3] + list(range(len(texts)))[2::3]  # mix
    texts, golds = [texts[i] for i in order], [golds[i] for i in order]
    # Bound: every adversarial response costs at most the budget plus a worker restart (< 3 s loaded) per worker.
    bound = len(adversarial) * (BUDGET_S + 3.0) / 2
    t0 = time.perf_counter()
    grades = run_with_timeout(lambda: grader.grade(texts, [Problem("", g, "t") for g in golds], [True] * len(texts)),
                              bound)
    elapsed = time.perf_counter() - t0
    correct = {r for _, r in CORRECT}
    for text, reward in zip(texts, grades.rewards):
        assert reward == (1.0 if text in correct else 0.0), text[:60]
    cut = {texts[i] for i in grades.timed_out}
    # whatever sympy makes of each one (cut at the budget, or given up by math-verify's own limit: which one depends
    # on the worker's state), no legitimate answer is cut, and every cut one cost a restart
    assert cut and not cut & correct and grades.restarts == len(cut) and elapsed < bound
    assert grades.metrics()["train/reward_timeouts"] == len(grades.timed_out)
    assert len(grader.pool.pids()) == 2 and all(alive(p) for p in grader.pool.pids())


def test_a_worker_killed_mid_batch_is_replaced_and_the_batch_completes(grader):
    texts = ["\\boxed{3^{3^{3^{3^{3^{3}}}}}}", "\\boxed{7^{7^{7^{77}}}}"] + [f"\\boxed{{{n}.0}}" for n in range(40)]
    problems = [Problem("", "1", "t")] * 2 + [Problem("", str(n), "t") for n in range(40)]
    victim = grader.pool.pids()[0]
    killer = threading.Timer(BUDGET_S / 2, os.kill, (victim, signal.SIGKILL))  # both workers are busy on the towers
    killer.start()
    grades = run_with_timeout(lambda: grader.grade(texts, problems, [True] * len(texts)), 60)
    killer.join()
    assert grades.rewards == [0.0, 0.0] + [1.0] * 40
    assert victim not in grader.pool.pids() and not alive(victim)
    assert grades.restarts >= 2  # the killed worker and at least one tower over budget


def test_a_response_that_crashes_its_worker_is_retried_once_then_scores_zero():
    with RewardGrader(ExitingTask(), ArithmeticTaskConfig(reward_workers=1)) as g:
        problems = [Problem("", "5", "t")] * 3
        grades = run_with_timeout(lambda: g.grade(["5", "crash", "5 "], problems, [True] * 3), 60)
        assert grades.rewards == [1.0, 0.0, 0.0] and grades.restarts == 2 and grades.timed_out == []


def test_the_budget_holds_when_grading_from_a_non_main_thread(grader):
    grader.wait_ready()  # workers replaced by an earlier test finish their start-up first: it is not graded time
    out = {}

    def work():
        t0 = time.perf_counter()
        out["grades"] = grader.grade(["\\boxed{9^{9^{9^{98}}}}"], [Problem("", "1", "t")], [True])
        out["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and out["grades"].timed_out == [0] and out["grades"].rewards == [0.0]
    # the budget cut it (timed out, where math-verify's own 5 s limit would have returned a grade), and the call ended
    # within the budget plus one worker replacement (starting a worker blocks until it has read the task: 2-3 s here)
    assert out["seconds"] < BUDGET_S + 4.0


def test_cache_serves_repeated_answers_and_counts_hits(tmp_path_factory):
    task = math_task(tmp_path_factory)
    p, q = Problem("", "\\frac{1}{2}", "t"), Problem("", "3", "t")
    texts = ["a \\boxed{0.5}", "b \\boxed{0.5}", "\\boxed{3}", "c \\boxed{0.5}"]  # the same prediction three times
    with RewardGrader(task, MathTaskConfig(train_file="", reward_workers=0, reward_cache_size=2)) as g:
        first = g.grade(texts, [p, p, q, p], [True] * 4)
        assert first.rewards == [1.0, 1.0, 1.0, 1.0] and first.cache_hits == 2
        assert first.metrics()["train/reward_cache_hit"] == 0.5
        again = g.grade(texts[:1], [p], [True])
        assert again.cache_hits == 1
        g.grade(["\\boxed{4}"], [q], [True])  # LRU of size 2: evicts the least recent key, ("3", "3")
        assert g.grade(["\\boxed{3}"], [q], [True]).cache_hits == 0
    with RewardGrader(task, MathTaskConfig(train_file="", reward_workers=0, reward_cache_size=0)) as g:
        assert g.grade(texts, [p, p, q, p], [True] * 4).cache_hits == 0


def test_cache_key_digest_separates_fields():
    assert RewardCache.digest(("1", "23")) != RewardCache.digest(("12", "3"))
    assert RewardCache.digest(("\ud800", "x")) == RewardCache.digest(("\ud800", "x"))  # lone surrogates hash


def reward_workers_alive() -> set[int]:
    return {p.pid for p in mp.active_children() if p.name == "lpreg-reward"}


def test_pool_grades_like_the_task_in_process():
    task = Arithmetic(ArithmeticTaskConfig(n_test=10))
    problems = task.train_problems()[:50]
    texts = [p.answer if i % 3 else p.answer + "1" for i, p in enumerate(problems)]
    finished = [i % 7 != 0 for i in range(50)]
    with RewardGrader(task, ArithmeticTaskConfig(n_test=10, reward_workers=2, reward_cache_size=0)) as g:
        grades = run_with_timeout(lambda: g.grade(texts, problems, finished), 60)
    assert grades.rewards == [task.reward(t, p, f) for t, p, f in zip(texts, problems, finished)]
    assert 0 < sum(grades.rewards) < 50


def test_a_run_with_the_pool_logs_reward_metrics_and_leaves_no_workers(tmp_path):
    from lpreg.harness.tracking import LocalStore
    from lpreg.native.trainer import train

    before = reward_workers_alive()
    cfg = compose_cfg([*FAST, "trainer.steps=1", "eval.at_start=false", "eval.samples=0", "task.reward_workers=1"])
    train(cfg, tmp_path, LocalStore(tmp_path))
    row = json.loads((tmp_path / "timing.jsonl").read_text().splitlines()[0])  # process-dependent counts
    assert row["train/reward_timeouts"] == 0 and 0 <= row["train/reward_cache_hit"] <= 1
    assert row["train/reward_deadline_cut"] == 0 and "train/reward_rejected" not in row
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])  # the response-determined count
    assert metrics["train/reward_rejected"] == 0 and "train/reward_deadline_cut" not in metrics
    assert reward_workers_alive() <= before


def test_a_run_that_raises_leaves_no_workers(tmp_path, monkeypatch):
    from lpreg.harness.tracking import LocalStore
    from lpreg.native import trainer

    def boom(*args, **kwargs):
        raise RuntimeError("model load failed")

    monkeypatch.setattr(trainer, "load_policy", boom)
    cfg = compose_cfg([*FAST, "trainer.steps=2", "task.reward_workers=1"])
    before = reward_workers_alive()
    with pytest.raises(RuntimeError, match="model load failed"):
        trainer.train(cfg, tmp_path, LocalStore(tmp_path))
    assert reward_workers_alive() <= before


def test_arithmetic_grades_in_process_by_default():
    assert ArithmeticTaskConfig.reward_workers == 0
    task = Arithmetic(ArithmeticTaskConfig(n_test=10))
    with RewardGrader(task, ArithmeticTaskConfig(n_test=10)) as g:
        assert g.pool is None
        p = task.train_problems()[0]
        assert g.grade([p.answer, p.answer], [p, p], [True, False]).rewards == [1.0, 0.0]


# ---- the screen before the pool, and the batch deadline ---------------------------------------------------------


def test_the_screen_refuses_adversarial_answers_before_any_worker_sees_them(tmp_path_factory):
    task = math_task(tmp_path_factory)
    adversarial = SLOW + OTHER_ADVERSARIAL
    texts = [r for _, r in CORRECT] + adversarial
    problems = [Problem("p", g, "t") for g, _ in CORRECT] + [Problem("p", "42", "t")] * len(adversarial)
    with RewardGrader(task, MathTaskConfig(train_file="", reward_workers=1, reward_cache_size=0)) as g:
        g.wait_ready()
        t0 = time.perf_counter()
        grades = run_with_timeout(lambda: g.grade(texts, problems, [True] * len(texts)), 60)
        elapsed = time.perf_counter() - t0
    assert grades.rewards == [1.0] * len(CORRECT) + [0.0] * len(adversarial)
    refused = grades.flagged(REJECTED)
    # all but the unbalanced and the empty box (no answer to parse) and the short garbage (5 odd characters, within
    # task.screen_max_non_ascii; math-verify refuses it in milliseconds)
    assert [texts[i] for i in refused] == [t for t in adversarial if t not in OTHER_ADVERSARIAL[-3:]]
    assert grades.timed_out == [] and grades.restarts == 0
    assert elapsed < BUDGET_S  # the budget alone needed BUDGET_S for each of SLOW
    assert grades.metrics()["train/reward_rejected"] == len(refused)
    rows = grades.flagged_rows(problems, texts)
    assert len(rows) == len(refused) and all(list(r) == list(rows[0]) for r in rows)  # one table, same columns
    assert {r["flag"] for r in rows} == {REJECTED} and rows[0]["reason"].startswith("exponent")


def test_the_metrics_of_the_flags_are_catalogued_where_they_belong():
    for name in ("train/reward_rejected", "train/reward_timeouts", "train/reward_deadline_cut"):
        assert name in METRICS
    assert not is_runtime("train/reward_rejected")  # the same responses give the same count: metrics.jsonl
    assert is_runtime("train/reward_deadline_cut") and is_runtime("train/reward_timeouts")  # load-dependent


@pytest.mark.parametrize("workers", [1, 0], ids=["pool", "in process"])
def test_the_batch_deadline_cuts_the_rest_of_the_call_and_counts_it(workers):
    deadline, each = 1.0, 0.3
    texts = [f"{each} #{i}" for i in range(12)]  # distinct: 3.6 s of grading in all
    problems = [Problem("p", "1", "t")] * len(texts)
    cfg = ArithmeticTaskConfig(reward_workers=workers, reward_batch_deadline_s=deadline)
    with RewardGrader(SleepyTask(), cfg) as g:
        g.wait_ready()
        t0 = time.perf_counter()
        grades = run_with_timeout(lambda: g.grade(texts, problems, [True] * len(texts)), 60)
        elapsed = time.perf_counter() - t0
        cut = grades.flagged(DEADLINE)
        assert 0 < len(cut) < len(texts) and cut == list(range(len(texts) - len(cut), len(texts)))  # the rest
        assert [grades.rewards[i] for i in cut] == [0.0] * len(cut) and sum(grades.rewards) == len(texts) - len(cut)
        assert elapsed < deadline + each + 1.0  # the bound: the deadline plus one response's grading
        assert grades.metrics()["train/reward_deadline_cut"] == len(cut)
        assert {r["flag"] for r in grades.flagged_rows(problems, texts)} == {DEADLINE}
        again = g.grade([texts[i] for i in cut[:2]], problems[:2], [True, True])  # a cut response was not cached
        assert again.cache_hits == 0 and again.rewards == [1.0, 1.0]


def test_a_response_being_graded_at_the_deadline_finishes_within_its_budget():
    texts = ["1.5 slow", "0.1 a", "0.1 b"]
    problems = [Problem("p", "1", "t")] * 3
    with RewardGrader(SleepyTask(), ArithmeticTaskConfig(reward_workers=1, reward_batch_deadline_s=0.5)) as g:
        g.wait_ready()
        t0 = time.perf_counter()
        grades = run_with_timeout(lambda: g.grade(texts, problems, [True] * 3), 60)
        elapsed = time.perf_counter() - t0
    assert grades.rewards == [1.0, 0.0, 0.0] and grades.flagged(DEADLINE) == [1, 2] and grades.timed_out == []
    assert 1.5 <= elapsed < 0.5 + BUDGET_S


def test_answers_inside_every_bound_end_within_math_verify_s_limits_not_the_budget(tmp_path_factory):
    """Slow for math-verify yet inside the screen's bounds: its own time limits stop them before the pool's budget."""
    within = ["\\boxed{(x+1)^{1000}}", "\\boxed{" + "(" * 10 + "1" + ")" * 10 + "}",
              "\\boxed{" + "\\frac{1}{" * 9 + "2" + "}" * 9 + "}"]
    task = math_task(tmp_path_factory)
    with RewardGrader(task, MathTaskConfig(train_file="", reward_workers=2, reward_cache_size=0)) as g:
        g.wait_ready()
        grades = run_with_timeout(lambda: g.grade(within, [Problem("p", "42", "t")] * 3, [True] * 3), 60)
    assert grades.rewards == [0.0] * 3 and grades.flags == {} and grades.restarts == 0
