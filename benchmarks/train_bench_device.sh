#!/usr/bin/env bash
# Issue 7's training benchmark (benchmarks/train_bench.py) on one H100/H200 (device kind nvidia-h200),
# all within ONE 10-minute device call: composer against mamba-ssm's MambaLMHeadModel at five layouts.
# Prepare on the CPU machine and carry `.device` (torch, einops, transformers and tqdm are on the
# device's image: no wheels are needed beyond the kernel sources):
#   mkdir -p .device && cp ../shared/device/* .device/
#   (the mamba-ssm and causal-conv1d wheels this script returns as $OUT/<wheel>.xz.part-*, put in
#    .device/kernel-wheels/ for a later call, skip the 341 s build and leave the call to the benchmark)
# Then, from the project root:   bash benchmarks/train_bench_device.sh        # results under $OUT
# Time plan: the kernel build takes ~341 s of the call (measured on an H200), so the side-by-side runs
# get what is left after it, ~190 s: few steps (2 warm-up, 6 timed), and no job starts past a budget.
# Each results file is rewritten after every model, so a cut run keeps what it measured. The call
# ends by ~550 s. Files under $OUT (8 at most come back): gpu.txt, kernels_build.log,
# during_build.{json,log} (the log starts with the chunked loss's GPU parity tests),
# train_bench.{json,log}, <wheel>.xz.part-*.
set -u
source benchmarks/device_env.sh
BENCH="python3 benchmarks/train_bench.py"

# 0. The chunked loss against the plain one on this GPU (tests/gpu/test_fused_loss_parity.py, ~30 s).
timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_fused_loss_parity.py > "$OUT/during_build.log" 2>&1
echo "chunked-loss parity: $(grep -E "passed|failed|error" "$OUT/during_build.log" | tail -1)"

# 1. While mamba-ssm builds (its compiler jobs take every core): composer's transformer layouts alone,
#    which need no Mamba kernels: eager with either loss, then compiled per layer. Cut at 330 s.
if [ ! -f /tmp/kernels/READY ]; then
  timeout $((330 - SECONDS)) $BENCH --sides composer --layouts llama-350m,llama-1b --warmup 2 --steps 6 \
    --variants eager:chunked,eager:full,compile:chunked --budget-s 260 --out "$OUT/during_build.json" \
    >> "$OUT/during_build.log" 2>&1
  status=$?
  echo "during the build: exit $status at ${SECONDS} s"
  [ $status -ne 0 ] && grep -v "^USDT" "$OUT/during_build.log" | tail -8
fi
if wait_for_kernels; then
  return_kernels
else
  echo "kernel build failed: the peer is skipped, composer's Mamba-2 runs its torch scan"
fi
echo "kernels done at ${SECONDS} s"

# 2. Every layout, the peer and composer side by side (eager, chunked loss, cuDNN attention), each
#    profiled for one step; then composer compiled, and with the full loss, while time is left.
timeout $((545 - SECONDS)) $BENCH --profile --warmup 2 --steps 6 --variants eager:chunked,compile:chunked,eager:full \
  --budget-s $((515 - SECONDS)) --out "$OUT/train_bench.json" > "$OUT/train_bench.log" 2>&1
status=$?
echo "side by side: exit $status at ${SECONDS} s"
[ $status -ne 0 ] && grep -v "^USDT" "$OUT/train_bench.log" | tail -15  # 124: cut by the timeout
results=$(ls "$OUT/during_build.json" "$OUT/train_bench.json" 2>/dev/null)
[ -n "$results" ] && $BENCH --report $results
