#!/usr/bin/env bash
# Run the GPU test module on a lent H100/H200 (no network there). From the project root, with
# `.device` prepared as ../shared/device/README.md says (kernel sources, fetch_wheels.sh with
# `pytest iniconfig pluggy packaging tqdm pyyaml` as extras) and carried:
#   bash tests/gpu/device_run.sh          # logs and run folders land in $OUT
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -f /tmp/kernels/READY ]; then
  if ls .device/kernel-wheels/*.whl >/dev/null 2>&1; then  # wheels built on an earlier run, carried back
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/kernel-wheels/*.whl && mkdir -p /tmp/kernels && touch /tmp/kernels/READY
  else
    setsid nohup bash .device/build_kernels.sh > "$OUT/kernels_build.log" 2>&1 < /dev/null &
  fi
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# Attention backends need no compiled kernels: run them while mamba-ssm builds.
timeout 120 python3 -m pytest -q -s tests/gpu -k "sdpa or window" 2>&1 | tee "$OUT/gpu_attention.log" | tail -3
timeout 100 python3 -m composer.cli model.mamba2.impl=torch trainer.max_tokens=1000000 trainer.progress=false \
  hydra.run.dir="$OUT/train_cuda_torch_scan" > "$OUT/train_cuda_torch_scan.log" 2>&1; tail -2 "$OUT/train_cuda_torch_scan.log"

while [ ! -f /tmp/kernels/READY ] && [ ! -f /tmp/kernels/FAILED ]; do sleep 5; done
[ -f /tmp/kernels/FAILED ] && { cat /tmp/kernels/FAILED; exit 1; }
mkdir -p "$OUT/kernel-wheels" && cp /tmp/kernels/wheels/*.whl "$OUT/kernel-wheels/" 2>/dev/null
timeout $((585 - SECONDS)) python3 -m pytest -q -s tests/gpu 2>&1 | tee "$OUT/gpu_all.log" | tail -15
