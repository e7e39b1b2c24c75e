"""lpreg's grader as verl's custom reward function (``reward.custom_reward_function``: ``compute_score``).

verl's reward workers call ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)``
for each response, from a thread pool. Each worker process grades through one ``lpreg.rewards.RewardGrader`` of the
run's task (built once, on the first call): the task's own ``reward`` (for math: the last ``\\boxed{}`` against
the normalized gold answer, math-verify), a hard time budget per response (``task.reward_timeout_s``; over it the
response scores 0), a pool of ``workers`` grading processes, and the cache. Calls are serialized with a lock (the
grader takes one caller at a time).

How it departs from the native trainer: verl hands over the decoded text only, so every response is graded as
finished (the math and arithmetic rewards do not read that flag); the grader's cache, timeout and restart counts are
not logged per step (a timed-out response is marked ``timed_out`` in the result, which verl keeps with the
sample).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_grader = None
_key = None


def task_config(task):
    """The typed task config from its dict (``lpreg/harness/config.py``: ``task=`` options); verl may hand the
    dict over as an OmegaConf node."""
    from omegaconf import DictConfig, OmegaConf

    from lpreg.harness.config import GROUPS, option_name

    if isinstance(task, DictConfig):
        task = OmegaConf.to_container(task, resolve=True)
    schemas = {option_name(s): s for s in GROUPS["task"]}
    if task.get("name") not in schemas:
        raise ValueError(f"reward_kwargs.task.name={task.get('name')!r} is not one of: {', '.join(schemas)}")
    return schemas[task["name"]](**task)


def grader_for(task: dict, workers: int):
    """This process's grader for ``task`` (built on first use, rebuilt if the task changes)."""
    global _grader, _key
    from lpreg.rewards import RewardGrader
    from lpreg.tasks import build_task

    key = (repr(task), workers)
    if _grader is None or _key != key:
        if _grader is not None:
            _grader.close()
        cfg = task_config(task)
        cfg.reward_workers = workers
        _grader, _key = RewardGrader(build_task(cfg), cfg), key
    return _grader


def compute_score(data_source, solution_str, ground_truth, extra_info=None, task=None, workers=1, **_):
    """verl's reward function: ``{"score": 0 or 1, "acc": the same, "timed_out": 0 or 1}``."""
    from lpreg.tasks import Problem

    if task is None:
        raise ValueError("lpreg's reward function needs reward_kwargs.task (lpreg/verl/config.py sets it)")
    with _lock:
        grades = grader_for(task, int(workers)).grade([solution_str], [Problem("", str(ground_truth),
                                                                                str(data_source))], [True])
    score = float(grades.rewards[0])
    return {"score": score, "acc": score, "timed_out": float(bool(grades.timed_out))}
