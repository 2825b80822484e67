#!/usr/bin/env bash
# On a CUDA machine, from the repository root with the project installed: under 8 minutes on one H100.
# Speed and memory against diffusers (fp16, bf16), exact 4096² tiling, fp16-fix, and SD-preset training
# throughput in bf16 with and without gradient checkpointing. Results: benchmarks/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python benchmarks/gpu_check.py
for flags in "--mixed-precision bf16" "--mixed-precision bf16 --gradient-checkpointing"; do
    python benchmarks/train_speed.py --archs sd --sizes 256 --batch 8 --steps 5 --ours "$flags"
done
