#!/usr/bin/env bash
# The verl backend's GPU check, for a machine with CUDA GPUs and `pip install -e '.[dev,verl-gpu]'` (verl 0.9.1,
# vLLM 0.31.0, torch 2.13.0 with CUDA): the verl tests, then a few RL steps of the embedded tiny model through
# `python -m lpreg.run backend=verl ...` (verl's real trainer: Ray, FSDP, the vLLM server, lpreg's actor extension),
# then, if MODEL is set (a hub id in the local cache or a folder), a few steps of that model on the math task.
# Each check prints PASS or FAIL with what it measured; the exit status is non-zero if any failed.
#   bash scripts/verl_gpu_check.sh                       # the tiny model (no download), all visible GPUs
#   MODEL=Qwen/Qwen3-0.6B-Base bash scripts/verl_gpu_check.sh
# Not run yet: no machine with a GPU and vLLM was available to the session that wrote it (docs/verl.md).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
OUT=${OUT:-verl_gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
GPU_GIB=${GPU_GIB:-$(python -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")}
python -c "import torch, verl, vllm, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'verl', verl.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)" || status=1

echo "== the verl tests (CPU code paths, on this machine's CPU)"
timeout 600 python -m pytest -q -p no:cacheprovider tests/test_verl.py || status=1

TINY=$(python -c "from pathlib import Path; import lpreg; print(next((Path(lpreg.__file__).parent / 'assets').glob('tiny-*')))")
check_run() {  # check_run NAME RUN_DIR: the run folder of a verl run holds lpreg's metrics under lpreg's names
  python - "$1" "$2" <<'EOF'
import json, math, sys
from pathlib import Path
name, run = sys.argv[1], Path(sys.argv[2])
ok = True
def report(what, good, detail=""):
    global ok
    ok &= bool(good)
    print(f"{'PASS' if good else 'FAIL'} {name}: {what} {detail}")
summary = json.loads((run / "summary.json").read_text())
report("summary.json completed", summary.get("status") == "completed", summary.get("error", ""))
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
steps = [r["step"] for r in rows]
report("metrics.jsonl has every step", steps and max(steps) >= 2, f"steps {steps}")
last = rows[-1] if rows else {}
for key in ("policy/entropy", "policy/tail_mass", "loss/total", "loss/pg", "policy/approx_kl", "optim/grad_norm",
            "train/reward_mean", "lpreg/candidates", "lpreg/regularized"):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    report(f"{key} finite", vals and all(math.isfinite(v) for v in vals), f"last {vals[-1] if vals else None}")
report("eval/mean logged", any("eval/mean" in r for r in rows), str([r.get("eval/mean") for r in rows if "eval/mean" in r]))
report("verl's own log kept", (run / "verl" / "metrics.jsonl").is_file())
timing = [json.loads(line) for line in (run / "timing.jsonl").read_text().splitlines() if line.strip()]
print(f"     {name}: step seconds {[round(t.get('timing/step', float('nan')), 1) for t in timing]}, "
      f"peak GPU memory GiB {[round(t.get('perf/peak_memory_gb', float('nan')), 2) for t in timing]}")
sys.exit(0 if ok else 1)
EOF
}

echo "== 3 steps of the tiny model, backend=verl, Lp-Reg, $NGPU GPU(s)"
RUN="$OUT/tiny"
rm -rf "$RUN"
timeout 1200 python -m lpreg.run backend=verl model=hf "model.path=$TINY" model.gradient_checkpointing=false \
  task=arithmetic task.max_prompt_len=16 rollout=vllm regularizer=lpreg regularizer.rho=0.05 \
  trainer.steps=3 trainer.prompts_per_step=32 trainer.mini_batches=2 trainer.max_tokens_per_micro_batch=4096 \
  trainer.checkpoint_every=0 eval.every=3 eval.at_start=true backend.nnodes=1 "backend.gpus_per_node=$NGPU" \
  "backend.gpu_memory_gib=$GPU_GIB" backend.gpu_memory_utilization=0.3 wandb.mode=disabled \
  "hydra.run.dir=$RUN" || status=1
check_run tiny "$RUN" || status=1

if [ -n "${MODEL:-}" ]; then
  echo "== 2 steps of $MODEL on the math task, backend=verl, Lp-Reg, on-policy"
  RUN="$OUT/model"
  rm -rf "$RUN"
  timeout 3600 python -m lpreg.run backend=verl model=hf "model.path=$MODEL" task=math task.max_train=64 \
    task.max_eval=8 task.max_response_len=1024 rollout=vllm regularizer=lpreg regularizer.rho=0.01 \
    trainer.steps=2 trainer.prompts_per_step=16 trainer.mini_batches=1 trainer.max_tokens_per_micro_batch=16384 \
    trainer.checkpoint_every=0 eval.every=2 eval.at_start=false backend.nnodes=1 "backend.gpus_per_node=$NGPU" \
    "backend.gpu_memory_gib=$GPU_GIB" backend.gpu_memory_utilization=0.4 wandb.mode=disabled \
    "hydra.run.dir=$RUN" || status=1
  check_run model "$RUN" || status=1
fi
exit $status
