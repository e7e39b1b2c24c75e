"""GPU tier: the trainer with vLLM rollouts. Skipped where no CUDA GPU (and vLLM) is present."""

import json

import pytest
import torch
from conftest import run_cli

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_rollout_trains_the_tiny_model(tmp_path):
    pytest.importorskip("vllm")
    from conftest import compose_cfg

    from lpreg.native.models import tiny_policy_path
    from lpreg.tasks import build_task

    cfg = compose_cfg()
    path = tiny_policy_path(cfg.model, build_task(cfg.task))
    run_cli(["model=hf", f"model.path={path}", "model.dtype=float32", "model.gradient_checkpointing=false",
             "rollout=vllm", "rollout.dtype=float32", "trainer.steps=3", "eval.every=3",
             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"]["eval/mean"] > 0.1
