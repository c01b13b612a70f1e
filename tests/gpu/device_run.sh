#!/usr/bin/env bash
# Run the GPU test module on a lent H100/H200 (no network there). From the project root, with
# `.device` prepared as ../shared/device/README.md says (kernel sources, fetch_wheels.sh with
# `pytest iniconfig pluggy packaging tqdm pyyaml` as extras) and carried:
#   bash tests/gpu/device_run.sh          # logs and run folders land in $OUT
set -u
source benchmarks/device_env.sh

# Attention backends and the chunked loss need no compiled kernels: run them while mamba-ssm builds.
timeout 120 python3 -m pytest -q -s tests/gpu -k "sdpa or window or chunked" 2>&1 | tee "$OUT/gpu_attention.log" | tail -3
timeout 100 python3 -m composer.apps.train model.mamba2.impl=torch trainer.max_tokens=1000000 trainer.progress=false \
  hydra.run.dir="$OUT/train_cuda_torch_scan" > "$OUT/train_cuda_torch_scan.log" 2>&1; tail -2 "$OUT/train_cuda_torch_scan.log"

wait_for_kernels || exit 1
return_kernels
timeout $((585 - SECONDS)) python3 -m pytest -q -s tests/gpu 2>&1 | tee "$OUT/gpu_all.log" | tail -15
