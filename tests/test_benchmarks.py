"""The benchmark harnesses still run (correctness, not speed: no timing is asserted)."""

import subprocess
import sys
from importlib.util import find_spec

import pytest
from conftest import ROOT


def test_every_benchmark_script_is_listed_with_its_command():
    out = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True)
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == {"vs_trl", "token_path", "rewards"}
    for name in scripts:
        assert f"python benchmarks/{name}.py" in out.stdout, name


def test_flop_count_uses_the_model_s_matmul_weights(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import vs_trl

    from lpreg.native.models import load_pretrained

    _, _, path, _ = vs_trl.policy_and_prompts(1)
    model, _ = load_pretrained(path)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if m.__class__.__name__ == "Linear")
    dims = vs_trl.model_dims(path)
    assert dims["body"] == linear == 524_288
    flops = vs_trl.step_flops(dims, batch=256, prompt=6, response=4)
    # by hand: 2 × 524,288 + 4 × 2 layers × 128 × 5.5 = 1,054,208 per position; head 2 × 64 × 128 × 256 × 4
    head = 16_777_216
    assert flops["generate"] == 256 * 9 * 1_054_208 + head  # prefill of 6 + 3 decode steps
    assert flops["train"] == 4 * (256 * 10 * 1_054_208 + head)  # log-prob pass + loss forward + backward (2×)


@pytest.mark.skipif(find_spec("trl") is None, reason="trl is not installed (pip install -e '.[bench]')")
def test_vs_trl_runs_both_systems_for_two_steps(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "benchmarks/vs_trl.py", "--threads", "1", "--pairs", "1", "--warmup", "0",
                           "--steps", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 1 | ")]
    assert [(r[1], r[2]) for r in rows[:2]] == [("lpreg", "2"), ("TRL", "2")]  # two measured steps of each
    assert all(float(r[3]) > 0 for r in rows[:2]) and "GFLOP" in out.read_text()
