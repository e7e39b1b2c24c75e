"""The GPU check (scripts/gpu_check.sh runs it): a few RL steps of ``model=hf`` with a random-init small Qwen3 (config
below, no download) on the shipped math data, with HF rollouts and, where vLLM is installed, vLLM rollouts; prints
step time, peak GPU memory and the rollout/trainer log-prob gap per engine as a Markdown table.

    python scripts/gpu_check.py [--steps 4] [--out gpu_check.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096)


def run(engine: str, model: Path, steps: int, out: Path) -> dict:
    args = [sys.executable, "-m", "lpreg.run", "task=math", "model=hf", f"model.path={model}", f"rollout={engine}",
            f"trainer.steps={steps}", "trainer.prompts_per_step=16", "task.max_response_len=512", "task.max_eval=16",
            "eval.every=0", "eval.at_start=false", "trainer.checkpoint_every=0", "task.sampled_k=2",
            "trainer.max_tokens_per_micro_batch=8192", "task.reward_workers=2", f"hydra.run.dir={out}"]
    if engine == "vllm":
        args.append("rollout.gpu_memory_utilization=0.3")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode:
        return {"engine": engine, "error": (proc.stderr or proc.stdout)[-2000:]}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timing = [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines()]
    return {"engine": engine, "step_s": statistics.median(t["timing/step"] for t in timing[1:] or timing),
            "peak_gb": max(t.get("perf/peak_memory_gb", float("nan")) for t in timing),
            "gap_mean": rows[-1].get("rollout/logprob_diff_mean"), "gap_max": rows[-1].get("rollout/logprob_diff_max"),
            "gap_frac": rows[-1].get("rollout/logprob_diff_frac")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="gpu_check.md")
    args = ap.parse_args()
    import torch

    from lpreg.native.models import save_random_qwen3

    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    engines = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "qwen3"
        save_random_qwen3(model, 4096, **QWEN3)
        results = [run(e, model, args.steps, Path(tmp) / e) for e in engines]
    lines = [f"GPU check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, random-init Qwen3 "
             f"({QWEN3['num_hidden_layers']} layers, hidden {QWEN3['hidden_size']}), {args.steps} steps of 16 prompts × 8, "
             "responses up to 512 tokens:", "",
             "| rollout | median step s | peak GPU GiB | log-prob gap mean | max | frac > 0.1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['engine']} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | | |")
        else:
            lines.append(f"| {r['engine']} | {r['step_s']:.2f} | {r['peak_gb']:.2f} | {r['gap_mean']:.2e} | "
                         f"{r['gap_max']:.2e} | {r['gap_frac']:.4f} |")
    if "vllm" not in engines:
        lines.append("\nvLLM is not installed here: rollout=vllm not checked.")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    for r in results:
        if "error" in r:
            print(r["error"], file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
