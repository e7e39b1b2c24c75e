"""Smoke tier: the real trainer on the tiny model for a few steps, through the CLI and in-process."""

import json
import math

import pytest
import torch
from conftest import FAST, compose_cfg, run_cli

from lpreg.core.metrics import METRICS


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_train(cfg, job_dir, resume=False):
    """``lpreg.native.trainer.train`` as ``run.py`` calls it: local store only, resuming from the job folder if asked."""
    from lpreg.harness.tracking import LocalStore
    from lpreg.native.checkpoint import find_resume
    from lpreg.native.trainer import train

    point = find_resume(job_dir) if resume else None
    return train(cfg, job_dir, LocalStore(job_dir, point.state["step"] if point else 0), point)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = run_cli([*FAST, "trainer.steps=3", "regularizer=lpreg", "regularizer.rho=0.5",
                    "+metrics.sparks.digits=['1','2']", f"hydra.run.dir={out}/run"], cwd=out)
    return out / "run", proc


def test_smoke_run_writes_the_run_folder(smoke_run):
    job, proc = smoke_run
    for name in ("metrics.jsonl", "timing.jsonl", "summary.json", "histograms.jsonl", "samples.jsonl",
                 ".hydra/config.yaml"):
        assert (job / name).stat().st_size > 0, name
    assert (job / "checkpoints" / "step_000003" / "trainer_state.pt").exists()
    assert (job / "checkpoints" / "step_000003" / "model.safetensors").exists()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["regularizer"] == "lpreg" and summary["seed"] == 0
    assert summary["git_revision"] and summary["wall_time_s"] > 0 and "eval/mean" in summary["final"]
    assert "eval/arithmetic/greedy" in proc.stdout  # the summary table


def test_smoke_run_logs_every_metric_name_with_finite_loss(smoke_run):
    job, _ = smoke_run
    rows = read_jsonl(job / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    keys = set().union(*rows) | set().union(*read_jsonl(job / "timing.jsonl"))
    # tables and histograms (checked in samples.jsonl / histograms.jsonl), CUDA only
    tables = {"samples", "acted_tokens", "policy/sampled_prob_hist", "perf/peak_memory_gb"}
    # another regularizer's or task's own: KL-Cov, 80/20, the spark task's decision point and its control arm
    others = ("kl_cov/", "highent/", "spark/", "control/")
    expected = {k for k in METRICS if "<" not in k and not k.startswith(others)} - tables
    expected |= {"eval/arithmetic/greedy", "eval/arithmetic/avg@2", "eval/arithmetic/pass@2", "eval/arithmetic/acc",
                 "timing/rollout", "timing/update", "timing/targets", "sparks/digits/prob"}
    assert expected <= keys, expected - keys
    assert all(math.isfinite(r["loss/total"]) for r in rows[1:])
    assert {t["name"] for t in read_jsonl(job / "samples.jsonl")} >= {"samples", "acted_tokens"}


def test_parameters_change_and_resume_continues_at_the_right_step(tmp_path):
    from lpreg.native.models import load_pretrained, tiny_policy_path
    from lpreg.tasks import build_task

    cfg = compose_cfg([*FAST, "trainer.steps=2", "eval.at_start=false"])
    run_train(cfg, tmp_path)
    start, _ = load_pretrained(tiny_policy_path(cfg.model, build_task(cfg.task)))
    after, _ = load_pretrained(tmp_path / "checkpoints" / "step_000002")
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), after.parameters()))

    cfg4 = compose_cfg([*FAST, "trainer.steps=4", "eval.at_start=false", "trainer.resume=true"])
    run_train(cfg4, tmp_path, resume=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]

    fresh = tmp_path / "fresh"
    cfg4b = compose_cfg([*FAST, "trainer.steps=4", "eval.at_start=false"])
    run_train(cfg4b, fresh)
    assert (tmp_path / "metrics.jsonl").read_bytes() == (fresh / "metrics.jsonl").read_bytes()  # resume = uninterrupted


def test_same_seed_same_config_gives_identical_metrics_files(tmp_path):
    files = []
    for name in ("a", "b"):
        d = tmp_path / name
        run_train(compose_cfg([*FAST, "trainer.steps=3", "regularizer=entropy"]), d)
        files.append((d / "metrics.jsonl").read_bytes())
    assert files[0] == files[1]
    d = tmp_path / "c"
    run_train(compose_cfg([*FAST, "trainer.steps=3", "regularizer=entropy", "seed=1"]), d)
    assert (d / "metrics.jsonl").read_bytes() != files[0]


def test_bad_config_value_fails_clearly_before_any_work(tmp_path):
    proc = run_cli([*FAST, "trainer.steps=1", "trainer.mini_batches=3", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "trainer.mini_batches=3 must divide" in proc.stderr
    # refused when the config is checked: no summary, metrics or checkpoint (only Hydra's own config and log)
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".hydra", "run.log"}


def test_nonfinite_gradient_skips_the_step(tmp_path, monkeypatch):
    import lpreg.native.trainer as T

    monkeypatch.setattr(T.torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("nan")))
    cfg = compose_cfg([*FAST, "trainer.steps=1", "eval.at_start=false", "eval.every=0"])
    run_train(cfg, tmp_path)
    row = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert row["optim/skipped"] == 2.0 and row["optim/grad_norm"] is None


def test_a_diverged_run_fails(tmp_path, monkeypatch):
    import lpreg.native.trainer as T

    monkeypatch.setattr(T.torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("nan")))
    cfg = compose_cfg([*FAST, "trainer.steps=5", "trainer.max_bad_steps=2", "eval.at_start=false", "eval.every=0"])
    with pytest.raises(FloatingPointError, match="diverged"):
        run_train(cfg, tmp_path)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_zero_eval_and_checkpoint_intervals_make_every_step_training_only(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.steps=2", "eval.at_start=false", "eval.every=0", "trainer.checkpoint_every=0"])
    out = run_train(cfg, tmp_path)
    assert out["evals"] == [] and not (tmp_path / "checkpoints").exists()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and not any(k.startswith("eval/") for r in rows for k in r)
    assert not any(k in r for r in read_jsonl(tmp_path / "timing.jsonl") for k in ("timing/eval", "timing/checkpoint"))
