#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU (under 10 minutes): the gpu-marked tests, a few RL steps of a
# random-init Qwen3 with HF (and, where vLLM is installed, vLLM) rollouts, and the token-path benchmark on CUDA.
# Prints step time, peak memory and the rollout/trainer log-prob gap; writes gpu_check.md and token_path_cuda.md.
#   bash scripts/gpu_check.sh            (after the README's install, with a CUDA build of torch)
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv || true
timeout 240 python -m pytest -q -p no:cacheprovider -m gpu tests/ || status=1
timeout 240 python scripts/gpu_check.py --steps 4 --out gpu_check.md || status=1
timeout 240 python benchmarks/token_path.py --device cuda --model qwen3-0.6b --lengths 1024,4096,8192 \
  --regs none,entropy,lpreg,lpreg_fkl,kl_cov --repeat 2 --out token_path_cuda.md || status=1
exit $status
