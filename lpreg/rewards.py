"""Rewards that never stall training: a screen, parallel grading with a hard per-response time budget, and a
deadline per call, for any task.

The trainer's reward phase and held-out evaluation both call ``RewardGrader.grade(texts, problems, finished)``;
the task only supplies ``reward`` (and optionally ``reward_screen``, ``reward_key``, ``reward_warmup``,
``reward_preload``).

- **Screen.** Every response first goes through ``task.reward_screen`` in the calling process: a response it
  refuses (for math: a boxed answer over one of the ``task.screen_max_*`` bounds, ``lpreg/tasks/screen.py``) scores
  0 at once, never reaches the cache or a worker, and is flagged ``rejected`` with the screen's reason
  (``train/reward_rejected``). The count depends only on the responses, so it goes to metrics.jsonl.
- **Pool.** ``task.reward_workers`` worker processes (null = one per usable core, at most ``MAX_AUTO_WORKERS``),
  started once per run and kept alive across steps. Each response is sent to an idle worker on its own and gets
  ``task.reward_timeout_s`` seconds of wall clock from that moment. Over budget, the worker is killed (SIGKILL) and
  replaced, the response scores 0 and is flagged ``timeout`` (``train/reward_timeouts``). The parent only waits on
  pipes, never on signals, so the budget holds when ``grade`` is called from any thread (math-verify's own limits,
  ``task.parse_timeout_s`` and ``task.verify_timeout_s``, are signals, off outside a main thread; in a worker they
  run in the main thread and end most slow answers before the budget, which stays the last line).
- **Deadline.** ``task.reward_batch_deadline_s`` (null = none) bounds one call: once that many seconds have passed
  since ``grade`` began, no response is sent to a worker any more; those not yet sent score 0 and are flagged
  ``deadline`` (``train/reward_deadline_cut``), while those being graded finish within their own budget. So a call
  returns at most ``task.reward_timeout_s`` after its deadline (plus the replacement of a worker cut at that budget:
  a fork from the server). In process the deadline is checked before each response, so a call ends at most one
  response's grading time after it.
- **Crashes.** A worker that dies while grading is replaced and its response is retried once on a fresh worker;
  a second death scores 0 (both deaths count in ``train/reward_worker_restarts``). A worker that dies before it
  is ready, or a task whose ``reward`` raises, is an error: those are bugs, not policy outputs.
- **Start method.** ``forkserver``: workers are forked from a clean server process, never from the trainer (whose
  torch threads make ``fork`` unsafe). The server imports ``__main__`` and ``task.reward_preload`` once, so a
  replacement worker starts with math-verify already imported; each worker then runs ``task.reward_warmup()``
  before it takes work, so imports and first-call set-up never count against the budget.
- **Cache.** An LRU map (``task.reward_cache_size`` entries; 0 = off) from a 128-bit BLAKE2b digest of
  ``task.reward_key(response, problem, finished)`` (for math: the last boxed answer and the gold) to the reward.
  Within one call, a response whose key repeats an earlier one is not graded again: it shares the earlier one's
  reward, and only the earlier one is flagged. Timed-out and crashed results are cached too (as 0), so a
  repeated pathological answer costs its budget once; responses cut by the deadline are not (they were never
  graded). ``train/reward_cache_hit`` is the fraction of responses served from the cache or from an earlier
  duplicate in the same call.
- **In process.** ``task.reward_workers: 0`` grades in the calling process with no hard budget. It is the
  embedded arithmetic task's default: its reward is an exact string match (about a microsecond per response), and
  the pool's round trip per response costs measurable step time there (numbers in ``ArithmeticTaskConfig``). For
  any other task, 0 is for debugging (tracebacks in process).
- **Flags.** ``Grades.flags`` maps the index of every response scored 0 without a grade to its kind (``rejected``,
  ``timeout``, ``deadline``) and reason; ``Grades.flagged_rows`` turns them into samples-table rows, one table for
  all three (the trainer logs it as ``reward_flagged``).
- **Lifetime.** ``close()`` (or the context manager) asks idle workers to exit, kills busy ones, and joins them
  all; the trainer calls it in a ``finally``. A worker also exits on its own when its pipe reaches EOF, i.e. when
  the trainer process is gone, so a killed run leaves no grading processes behind once the current response ends.

One caller at a time: ``grade`` is not re-entrant across threads (the trainer and evaluation call it in turn).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger(__name__)

# Auto worker count cap: a math worker's resident set measured 70 MB on this machine (ps RSS, pages shared with the
# fork server included), so 16 workers stay near 1.1 GB on large nodes.
MAX_AUTO_WORKERS = 16
MAX_START_FAILURES = 3  # consecutive workers killed by a signal before they were ready, then an error
START_TIMEOUT_S = 300.0  # a worker not ready after this long (import + warm-up) is an error, not a slow start
FLAGGED_ROW_CHARS = 2000  # tail of a flagged response kept in its samples row (the graded answer is at the end)
REJECTED, TIMEOUT, DEADLINE = "rejected", "timeout", "deadline"  # kinds of Grades.flags
FLAG_METRICS = {REJECTED: "reward_rejected", TIMEOUT: "reward_timeouts", DEADLINE: "reward_deadline_cut"}
_READY = "ready"
_DEAD = object()


class RewardError(RuntimeError):
    """A task's reward raised, or a grading worker could not start."""


@dataclass
class Grades:
    """Rewards for one ``grade`` call and what happened on the way."""

    rewards: list[float]
    flags: dict[int, tuple[str, str]]  # response index -> (kind, reason) of each response scored 0 without a grade
    cache_hits: int  # responses served from the cache or from an earlier duplicate in the call
    restarts: int  # workers replaced during the call (over budget, or died)

    def flagged(self, kind: str) -> list[int]:
        """Indices of the responses flagged ``kind`` (REJECTED, TIMEOUT or DEADLINE), in order."""
        return sorted(i for i, (k, _) in self.flags.items() if k == kind)

    @property
    def timed_out(self) -> list[int]:
        return self.flagged(TIMEOUT)

    def metrics(self, prefix: str = "train") -> dict[str, float]:
        n = len(self.rewards)
        counts = {f"{prefix}/{name}": float(len(self.flagged(kind))) for kind, name in FLAG_METRICS.items()}
        return counts | {f"{prefix}/reward_cache_hit": self.cache_hits / n if n else math.nan,
                         f"{prefix}/reward_worker_restarts": float(self.restarts)}

    def flagged_rows(self, problems, texts: list[str]) -> list[dict[str, Any]]:
        """Samples-table rows of the flagged responses (the last ``FLAGGED_ROW_CHARS`` characters of each)."""
        return [{"prompt": problems[i].prompt[-200:], "response": texts[i][-FLAGGED_ROW_CHARS:],
                 "answer": problems[i].answer, "reward": 0.0, "flag": kind, "reason": reason}
                for i, (kind, reason) in sorted(self.flags.items())]


def resolve_workers(requested: int | None) -> int:
    """``task.reward_workers``: as given, or (null) one per core this process may use, at most MAX_AUTO_WORKERS."""
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, MAX_AUTO_WORKERS))
    if requested < 0:
        raise ValueError(f"task.reward_workers={requested} must be >= 0 (0 = in process) or null (one per core)")
    return requested


class RewardCache:
    """LRU map from a 16-byte digest of a task's reward key to the reward; ``size`` 0 disables it."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"task.reward_cache_size={size} must be >= 0 (0 = off)")
        self.size, self.data = size, OrderedDict()

    @staticmethod
    def digest(key: Any) -> bytes:
        return hashlib.blake2b(repr(key).encode("utf-8", "backslashreplace"), digest_size=16).digest()

    def get(self, digest: bytes) -> float | None:
        value = self.data.get(digest)
        if value is not None:
            self.data.move_to_end(digest)
        return value

    def put(self, digest: bytes, value: float) -> None:
        if self.size:
            self.data[digest] = value
            self.data.move_to_end(digest)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


def _serve(conn, task) -> None:
    """Worker loop: warm up, report ready, then grade ``(response, problem, finished)`` until None or EOF."""
    try:
        task.reward_warmup()
    except Exception:  # noqa: BLE001 -- reported to the parent, which raises it as a RewardError
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(_READY)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the trainer process is gone
            return
        if job is None:
            return
        try:
            conn.send(("ok", float(task.reward(*job))))
        except Exception:  # noqa: BLE001 -- reported to the parent, which raises it with the response named
            conn.send(("error", traceback.format_exc()))


class _Worker:
    def __init__(self, ctx, task):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, task), daemon=True, name="lpreg-reward")
        self.proc.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None  # index into the current call's jobs
        self.deadline = math.inf

    def receive(self):
        """The next message, or ``_DEAD`` when the process has exited and left nothing to read."""
        try:
            return self.conn.recv() if self.conn.poll() else _DEAD
        except (EOFError, OSError):
            return _DEAD

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class WorkerPool:
    """Long-lived grading processes with a hard per-job wall-clock budget (see the module docstring)."""

    def __init__(self, task, n: int, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"task.reward_timeout_s={timeout_s} must be > 0")
        self.ctx = mp.get_context("forkserver")
        # Only takes effect when this process starts its fork server (the first pool); later pools share it.
        self.ctx.set_forkserver_preload(["__main__", *getattr(task, "reward_preload", ())])
        self.task, self.timeout_s, self.start_failures = task, timeout_s, 0
        self.workers = [_Worker(self.ctx, task) for _ in range(n)]

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def _replace(self, k: int) -> None:
        self.workers[k].stop()
        self.workers[k] = _Worker(self.ctx, self.task)

    def _startup_message(self, k: int, msg) -> None:
        """Handle the first message of worker ``k``: ready, a warm-up error, or its death before ready."""
        w = self.workers[k]
        if msg is _DEAD:
            w.proc.join(5.0)  # its pipe can report EOF before the fork server reports the exit code
        if msg == _READY:
            w.ready, self.start_failures = True, 0
        elif msg is _DEAD and (w.proc.exitcode or 0) < 0 and self.start_failures < MAX_START_FAILURES:
            self.start_failures += 1  # killed by a signal (an operator, the OOM killer): start another
            log.warning("a reward worker was killed during start-up (signal %d); replaced", -w.proc.exitcode)
            self._replace(k)
        elif msg is _DEAD:
            raise RewardError(f"a reward worker exited during start-up (exit code {w.proc.exitcode}); run with "
                              "task.reward_workers=0 to grade in process and see the error")
        else:
            raise RewardError(f"task.reward_warmup() failed in a reward worker:\n{msg[1]}")

    def wait_ready(self) -> None:
        """Block until every worker has warmed up (benchmarks call this so that start-up is not timed)."""
        while not all(w.ready for w in self.workers):
            waiting = [w for w in self.workers if not w.ready]
            if time.monotonic() - min(w.started for w in waiting) > START_TIMEOUT_S:
                raise RewardError(f"reward workers not ready after {START_TIMEOUT_S:.0f} s (import + warm-up)")
            ready = set(wait([x for w in waiting for x in (w.conn, w.proc.sentinel)], timeout=1.0))
            for k, w in enumerate(self.workers):
                if not w.ready and (w.conn in ready or w.proc.sentinel in ready):
                    self._startup_message(k, w.receive())

    def map(self, jobs: list[tuple], deadline: float = math.inf) -> tuple[list[float], list[int], list[int], int]:
        """Grade ``jobs``, sending none after ``deadline`` (``time.monotonic()``); returns (rewards, indices cut at
        the budget, indices never sent because the deadline passed, workers replaced)."""
        try:
            return self._map(jobs, deadline)
        except BaseException:
            for k, w in enumerate(self.workers):  # a worker still busy would answer into the next call
                if w.job is not None:
                    self._replace(k)
            raise

    def _map(self, jobs: list[tuple], deadline: float) -> tuple[list[float], list[int], list[int], int]:
        results, timed_out, cut, tries, restarts = [0.0] * len(jobs), [], [], [0] * len(jobs), 0
        pending = deque(range(len(jobs)))
        while pending or any(w.job is not None for w in self.workers):
            if pending and time.monotonic() >= deadline:
                cut += pending
                pending.clear()
            for w in self.workers:
                if w.ready and w.job is None and pending:
                    i = pending.popleft()
                    tries[i] += 1
                    w.job, w.deadline = i, time.monotonic() + self.timeout_s
                    try:
                        w.conn.send(jobs[i])
                    except OSError:  # died while idle: picked up below as a death
                        pass
            busy = [w.deadline for w in self.workers if w.job is not None]
            if not busy and not pending:
                break
            wake = min(busy) if busy else time.monotonic() + START_TIMEOUT_S
            if pending:  # wake at the deadline to cut what is still waiting
                wake = min(wake, deadline)
            ready = set(wait([x for w in self.workers for x in (w.conn, w.proc.sentinel)],
                             timeout=max(0.0, wake - time.monotonic())))
            if not ready and not busy and time.monotonic() < deadline:
                raise RewardError(f"no reward worker became ready within {START_TIMEOUT_S:.0f} s")
            for k, w in enumerate(self.workers):
                if w.conn not in ready and w.proc.sentinel not in ready:
                    continue
                msg = w.receive()
                if not w.ready:
                    self._startup_message(k, msg)
                elif msg is _DEAD:
                    restarts += 1
                    i = w.job
                    log.warning("a reward worker died (exit code %s); replaced", w.proc.exitcode)
                    self._replace(k)
                    if i is not None and tries[i] < 2:
                        pending.appendleft(i)
                elif msg[0] == "ok":
                    results[w.job], w.job = msg[1], None
                else:
                    raise RewardError(f"task {self.task.name!r}: reward raised on response "
                                      f"{str(jobs[w.job][0])[-200:]!r}:\n{msg[1]}")
            now = time.monotonic()
            for k, w in enumerate(self.workers):
                if w.job is not None and now >= w.deadline:
                    timed_out.append(w.job)
                    restarts += 1
                    self._replace(k)
        return results, sorted(timed_out), sorted(cut), restarts

    def close(self) -> None:
        for w in self.workers:
            if w.job is None and w.proc.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 1.0
        for w in self.workers:
            if w.job is None:
                w.proc.join(max(0.0, deadline - time.monotonic()))
            w.stop()  # kills what is still running; a no-op on an exited process
        self.workers = []


class RewardGrader:
    """The reward call of the trainer and of evaluation: screen, cache, then the pool (or in process)."""

    def __init__(self, task, cfg):
        self.task = task
        self.cache = RewardCache(cfg.reward_cache_size)
        if cfg.reward_batch_deadline_s is not None and not cfg.reward_batch_deadline_s > 0:
            raise ValueError(f"task.reward_batch_deadline_s={cfg.reward_batch_deadline_s} must be > 0 or null (none)")
        self.deadline_s, self.timeout_s = cfg.reward_batch_deadline_s, cfg.reward_timeout_s
        n = resolve_workers(cfg.reward_workers)
        self.pool = WorkerPool(task, n, cfg.reward_timeout_s) if n else None

    def grade(self, texts: list[str], problems, finished: list[bool]) -> Grades:
        """Rewards of ``texts`` (responses to ``problems``); see the module docstring for the screen, the budget,
        the deadline and the cache."""
        deadline = time.monotonic() + self.deadline_s if self.deadline_s is not None else math.inf
        flags: dict[int, tuple[str, str]] = {}
        first: dict[Any, int] = {}  # key -> index of its first uncached response in this call
        keys: list[Any] = []  # per response: its key, or None when the screen refused it
        cached, hits = {}, 0
        for i, (text, problem, done) in enumerate(zip(texts, problems, finished)):
            reason = self.task.reward_screen(text, problem, done)
            if reason is not None:
                flags[i] = (REJECTED, reason)
                keys.append(None)
                continue
            key = RewardCache.digest(self.task.reward_key(text, problem, done)) if self.cache.size else i
            keys.append(key)
            value = self.cache.get(key) if self.cache.size else None
            if value is not None:
                cached[key] = value
                hits += 1
            elif key in first:
                hits += 1
            else:
                first[key] = i
        jobs = [(texts[i], problems[i], bool(finished[i])) for i in first.values()]
        if self.pool is not None:
            values, timed_out, cut, restarts = self.pool.map(jobs, deadline)
        else:
            values, cut = self._in_process(jobs, deadline)
            timed_out, restarts = [], 0
        owners, not_graded = list(first.values()), set(cut)
        for j, (key, value) in enumerate(zip(first, values)):
            if j not in not_graded:
                self.cache.put(key, value)
            cached[key] = value
        flags |= {owners[j]: (TIMEOUT, f"graded for longer than task.reward_timeout_s = {self.timeout_s:g} s")
                  for j in timed_out}
        flags |= {owners[j]: (DEADLINE, f"not graded before task.reward_batch_deadline_s = {self.deadline_s:g} s")
                  for j in cut}
        return Grades([0.0 if k is None else cached[k] for k in keys], flags, hits, restarts)

    def _in_process(self, jobs: list[tuple], deadline: float) -> tuple[list[float], list[int]]:
        """Rewards graded here, in order, until ``deadline`` passes; returns (rewards, indices not graded)."""
        values: list[float] = []
        for job in jobs:
            if time.monotonic() >= deadline:
                break
            values.append(float(self.task.reward(*job)))
        cut = list(range(len(values), len(jobs)))
        return values + [0.0] * len(cut), cut

    def wait_ready(self) -> None:
        if self.pool is not None:
            self.pool.wait_ready()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> RewardGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
