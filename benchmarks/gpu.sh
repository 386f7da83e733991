#!/usr/bin/env bash
# The paper-scale table on one lent GPU, in under 8 minutes (the device has 15 in all, start-up included):
# Fisher pass on random-weight Llama-3.1-8B and Qwen3-14B shapes in bf16 and on 4 of Llama-3.3-70B's 80 blocks in
# 4-bit NF4, 8 synthetic samples x 2048 tokens each, plus 20 DistillationTrainer steps on a 1B shape.
# Writes benchmarks/results/gpu.json (and $OUT/gpu.json when run through the device tool).
#   bash benchmarks/gpu.sh            # CUDA
#   bash benchmarks/gpu.sh --tiny     # the same script on CPU with tiny shapes (tests/test_scale.py runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  exec timeout 300 python benchmarks/gpu.py --tiny --device cpu --samples 4 --seq-len 64 --distill-steps 2 \
    --distill-batch 2 --layers-70b 2 "$@"
fi
python -c "import bitsandbytes" 2>/dev/null || pip install --quiet bitsandbytes || echo "bitsandbytes missing: the 70B row will fail"
timeout 470 python benchmarks/gpu.py --device cuda "$@"
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/gpu.json "$OUT/gpu.json"; fi
