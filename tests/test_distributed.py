"""One run over several processes (lpreg/distributed.py): torchrun with the gloo backend on this CPU.

Each test launches ``torchrun --standalone --nproc_per_node=N -m lpreg.run`` in a subprocess with small settings and
compares the logged ``metrics.jsonl`` of runs on 1 and 2 processes (same global batch and micro-batching).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpreg import distributed

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["trainer.prompts_per_step=4", "trainer.mini_batches=2", "eval.samples=2", "eval.every=2",
         "trainer.checkpoint_every=2", "metrics.samples_every=0"]
TOL = 1e-5  # relative (absolute below 1): the bound; measured worst 2.1e-6 (lpreg scope=batch, 3 steps)


def torchrun(n: int, args: list[str], cwd: Path, script: str | None = None, check: bool = True, timeout: int = 600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd += [script] if script else ["-m", "lpreg.run"]
    proc = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun x{n} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def metrics(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb), set(ra) ^ set(rb)
        for k, va in ra.items():
            vb = rb[k]
            if va is None or vb is None:
                assert va == vb, (ra["step"], k, va, vb)
            else:
                assert math.isclose(va, vb, rel_tol=TOL, abs_tol=TOL), (ra["step"], k, va, vb)


def test_shard_prompts_keeps_mini_batches_and_groups():
    # 8 prompts, 2 mini-batches of 4, 2 ranks: rank r holds the r-th half of each mini-batch
    assert distributed.shard_prompts(8, 2, 2, 0) == [0, 1, 4, 5]
    assert distributed.shard_prompts(8, 2, 2, 1) == [2, 3, 6, 7]
    assert sorted(distributed.shard_prompts(8, 2, 2, 0) + distributed.shard_prompts(8, 2, 2, 1)) == list(range(8))
    with pytest.raises(ValueError, match="trainer.prompts_per_step=6"):
        distributed.shard_prompts(6, 2, 2, 0)


@pytest.mark.parametrize("reg", [["regularizer=none"], ["regularizer=lpreg", "regularizer.scope=batch"],
                                 ["regularizer=entropy"]], ids=["none", "lpreg-batch", "entropy"])
def test_two_processes_log_the_single_process_metrics(tmp_path, reg):
    args = [*SMALL, "trainer.steps=3", *reg]
    torchrun(1, [*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    torchrun(2, [*args, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == 4  # step 0 (eval) and 3 training steps
    assert_same(one, two)
    if reg[0] == "regularizer=lpreg":  # the selection was exercised, not vacuous
        assert any(r.get("lpreg/candidates") for r in two)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (tmp_path / "two" / "checkpoints" / "step_000002" / "dcp").is_dir()


RESUME = [*SMALL, "regularizer=lpreg", "regularizer.scope=batch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    """Metrics of a 4-step run on 2 processes, never stopped."""
    tmp = tmp_path_factory.mktemp("full")
    torchrun(2, [*RESUME, "trainer.steps=4", f"hydra.run.dir={tmp / 'job'}"], tmp)
    return metrics(tmp / "job")


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_resume_on_another_number_of_processes(tmp_path, uninterrupted, first, then):
    job = tmp_path / "cut"
    torchrun(first, [*RESUME, "trainer.steps=2", f"hydra.run.dir={job}"], tmp_path)
    assert (job / "checkpoints" / "step_000002" / "model.safetensors").is_file()  # the HF export (rank 0)
    torchrun(then, [*RESUME, "trainer.steps=4", "trainer.resume=true", f"hydra.run.dir={job}"], tmp_path)
    assert_same(uninterrupted, metrics(job))


FAILING = """
import os, runpy, sys
import lpreg.trainer as trainer
update = trainer.update
def failing(*args, **kwargs):
    if os.environ["RANK"] == "1":
        raise RuntimeError("injected failure on rank 1")
    return update(*args, **kwargs)
trainer.update = failing
sys.argv = ["lpreg.run", *sys.argv[1:]]
runpy.run_module("lpreg.run", run_name="__main__")
"""


def test_a_failing_rank_ends_the_job_and_is_named(tmp_path):
    script = tmp_path / "fail_rank1.py"
    script.write_text(FAILING)
    job = tmp_path / "job"
    proc = torchrun(2, [*SMALL, "trainer.steps=2", f"hydra.run.dir={job}"], tmp_path, script=str(script), check=False,
                    timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    root_cause = out[out.index("Root Cause"):]
    assert "rank      : 1" in root_cause and "RuntimeError: injected failure on rank 1" in root_cause
    assert json.loads((job / "summary.json").read_text())["status"] == "failed"


COUNTING = """
import json, os, runpy, sys
import lpreg.distributed as distributed
equal_counts = distributed.equal_counts
def counting(minis, gen):
    with open(os.environ["COUNTS"] + os.environ["RANK"], "a") as fh:
        fh.write(json.dumps([len(m) for m in minis]) + "\\n")
    return equal_counts(minis, gen)
distributed.equal_counts = counting
sys.argv = ["lpreg.run", *sys.argv[1:]]
runpy.run_module("lpreg.run", run_name="__main__")
"""


def test_ranks_with_different_micro_batch_counts(tmp_path, monkeypatch):
    """A token budget that cuts the ranks' halves into different numbers of micro-batches: every forward/backward
    is a collective, so without ``equal_counts`` the run would hang; the loss (exact under any cut) and the rollout
    metrics still equal the single-process run's (``policy/clipfrac`` and ``approx_kl`` are means over micro-batches
    and depend on the cut, as on one process)."""
    script = tmp_path / "count.py"
    script.write_text(COUNTING)
    monkeypatch.setenv("COUNTS", str(tmp_path / "counts"))
    # measured: with 8 prompts and 27 tokens, the ranks' mini-batches cut into 6 vs 7, 8 vs 7, ... micro-batches
    args = [*(a for a in SMALL if not a.startswith(("trainer.prompts_per_step", "trainer.checkpoint_every"))),
            "trainer.prompts_per_step=8", "trainer.steps=2", "trainer.checkpoint_every=0",
            "trainer.max_tokens_per_micro_batch=27"]
    torchrun(1, [*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    torchrun(2, [*args, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, script=str(script), timeout=300)
    per_rank = [(tmp_path / f"counts{r}").read_text().splitlines() for r in (0, 1)]
    assert any(a != b for a, b in zip(*per_rank)), per_rank  # the ranks did cut differently
    drop = {"policy/clipfrac", "policy/approx_kl"}
    keep = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert_same(keep(metrics(tmp_path / "one")), keep(metrics(tmp_path / "two")))
