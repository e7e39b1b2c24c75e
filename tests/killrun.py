"""``python tests/killrun.py STEP:POINT [lpreg.run overrides]``: ``python -m lpreg.run`` killed with SIGKILL at one point
of one step, the way a real crash (``kill -9``, the out-of-memory killer, a node failure) could stop it.

The points are reached by wrapping the product's own functions in this process (nothing in the package knows about
them): ``rollout`` (start of the step: the prompt sampler is asked), ``update`` (after the optimizer steps, nothing
of the step written: the store is about to log it), ``checkpoint_written`` (the step's lines on disk, its checkpoint
written but not committed), ``committed`` (just after the checkpoint's rename), ``between_metrics_timing`` (the
metrics line written, the timing line not), ``torn_metrics`` (half of the step's metrics line written).
"""

import os
import runpy
import signal
import sys


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def install(step: int, point: str) -> None:
    from lpreg.harness import tracking
    from lpreg.native import checkpoint, trainer

    if point == "rollout":
        calls = {"n": 0}
        original = trainer.PromptSampler.next

        def next_(self, k):
            calls["n"] += 1
            if calls["n"] == step:
                die()
            return original(self, k)

        trainer.PromptSampler.next = next_
    elif point == "update":
        original_log = tracking.LocalStore.log

        def log(self, metrics, s):
            if s == step:
                die()
            return original_log(self, metrics, s)

        tracking.LocalStore.log = log
    elif point in ("checkpoint_written", "committed"):
        original_commit = checkpoint.commit

        def commit(tmp, keep=2):
            at = tmp.name.endswith(f"_{step:06d}")
            if at and point == "checkpoint_written":
                die()
            out = original_commit(tmp, keep)
            if at:
                die()
            return out

        checkpoint.commit = commit
    elif point in ("between_metrics_timing", "torn_metrics"):
        original_append = tracking.LocalStore._append

        def append(self, name, record):
            if record.get("step") == step and name == "timing.jsonl" and point == "between_metrics_timing":
                die()
            if record.get("step") == step and name == "metrics.jsonl" and point == "torn_metrics":
                import json

                line = json.dumps(record, sort_keys=True) + "\n"
                with open(self.dir / name, "a") as fh:
                    fh.write(line[: len(line) // 2])
                die()
            return original_append(self, name, record)

        tracking.LocalStore._append = append
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    where = sys.argv.pop(1)
    if where != "none":
        s, p = where.split(":")
        install(int(s), p)
    sys.argv[0] = "lpreg.run"
    runpy.run_module("lpreg.run", run_name="__main__", alter_sys=True)
