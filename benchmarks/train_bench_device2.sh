#!/usr/bin/env bash
# Issue 7, second device call (one nvidia-h200, `.device` carried; see train_bench_device.sh): the
# hybrid and Mamba-2 layouts side by side with the peer, which the first call's time did not reach.
#   during the kernel build: composer's transformer layouts with the full loss, eager and compiled;
#   after it: every layout against MambaLMHeadModel, composer compiled then eager (chunked loss),
#   hybrids and Mamba-2 first, each profiled for one step. Results: $OUT/{during,side}.{json,log}.
set -u
source benchmarks/device_env.sh
BENCH="python3 benchmarks/train_bench.py"
timeout 200 $BENCH --sides composer --layouts llama-350m,llama-1b --warmup 2 --steps 6 \
  --variants compile:full,eager:full --budget-s 150 --out "$OUT/during.json" > "$OUT/during.log" 2>&1
echo "during the build: exit $? at ${SECONDS} s"
wait_for_kernels || exit 1
echo "kernels done at ${SECONDS} s"
timeout $((575 - SECONDS)) $BENCH --profile --warmup 2 --steps 6 --layouts nemotron-350m,mamba2-350m,nemotron-1b,llama-350m,llama-1b \
  --variants compile:chunked,eager:chunked --budget-s $((545 - SECONDS)) --out "$OUT/side.json" > "$OUT/side.log" 2>&1
echo "side by side: exit $? at ${SECONDS} s"
$BENCH --report "$OUT/during.json" "$OUT/side.json"
