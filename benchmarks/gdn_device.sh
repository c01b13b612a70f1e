#!/usr/bin/env bash
# Issue 16's GPU figures for Gated DeltaNet on a lent H200, with tilelang: fla 0.6.0 refuses the gated
# delta rule's backward on Hopper with the machine's Triton 3.6 (wrong gradients, fla #640) unless tilelang
# is installed, so composer's `impl=auto` falls back to its torch reference and fla's own model cannot train.
# Carry [".device/gdn"], a folder of the wheels (54 MB; the 64 MiB carry limit leaves no room for .device):
#   tilelang 0.1.15, apache-tvm-ffi 0.1.12, torch-c-dlpack-ext 0.1.5 (pip download --no-deps --only-binary=:all:
#   --python-version 3.12 --platform manylinux_2_28_x86_64 ...), fla-core and flash-linear-attention 0.6.0, and from
#   .device/wheels tqdm, pytest, pluggy, iniconfig and packaging (what the benchmark and the tests import).
# z3-solver (29 MB), which tilelang lists, stays behind: tilelang only logs its absence at import.
# Runs (one call, about 6 minutes): the GDN parity tests (fla against the reference, values and gradients,
# fp32 and bf16: the backward ones ran skipped before), then `train_bench.py` on the Qwen3-Next-style
# layout at 1B against fla's GatedDeltaNetForCausalLM, compiled and eager. Results in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/gdn/*.whl 2>&1 | grep -v "already exists"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, tilelang, fla; print('torch', torch.__version__, 'triton', triton.__version__,
  'tilelang', tilelang.__version__, 'fla', fla.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m pytest -q -s tests/gpu/test_gdn_parity.py > "$OUT/gdn_parity.log" 2>&1
tail -n 6 "$OUT/gdn_parity.log"
timeout $((570 - SECONDS)) python3 benchmarks/train_bench.py --layouts qwen3next-1b --variants compile:full,eager:full \
  --budget-s $((480 - SECONDS)) --out "$OUT/train_bench_gdn.json" > "$OUT/train_bench_gdn.log" 2>&1
tail -n 25 "$OUT/train_bench_gdn.log"
