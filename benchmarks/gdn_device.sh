#!/usr/bin/env bash
# Issue 16's GPU figures for Gated DeltaNet on a lent H200, with tilelang: fla 0.6.0 refuses the gated
# delta rule's backward on Hopper with the machine's Triton 3.6 (wrong gradients, fla #640) unless tilelang
# is installed, so composer's `impl=auto` falls back to its torch reference and fla's own model cannot train.
# Carry [".device/wheels", ".device/gdn", ".device/triton-autotune.tar.gz"] as benchmarks/device_prepare.sh makes
# them (.device/gdn: tilelang unpacked and xz-compressed, its runtime wheels, pytest; fla from .device/wheels; the
# last: Triton's tuning results of earlier calls, device_autotune.sh). Needs no mamba-ssm: it can run while the kernels build
# (fidelity_device.sh PART=all WHILE_BUILDING="OUT=/tmp/issue15-logs/gdn GDN_LIMIT=390 bash benchmarks/gdn_device.sh").
# Runs (about 6 minutes; GDN_LIMIT seconds at most, default 570, 10 s of it kept for returning the autotune
# results): gdn_probe.py (GDN_PROBE_S seconds, default 90: each configuration fla's first bf16 calls tune, timed),
# the GDN parity tests (GDN_PARITY_S seconds at most, default 300; fla against the reference, values and gradients,
# fp32 and bf16: all passed on the H200 by 2026-12-05 before the conv and gates moved into fla's kernels; to run again), then `train_bench.py` on the Qwen3-Next-style layout at 1B against fla's
# GatedDeltaNetForCausalLM, compiled and eager (GDN_VARIANTS, default compile:full,eager:full, none: no bench; GDN_BENCH_ARGS more of
# train_bench.py's arguments, e.g. --profile). Results in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LIMIT=${GDN_LIMIT:-570}
# Into a site of its own: the kernels' /tmp/site (fidelity_device.sh) stays as the other scripts expect it
# (tilelang there without its z3 had broken mamba-ssm's import for the rest of a call, 2026-12-04)
python3 -m pip install -q --no-index --no-deps --target /tmp/gdn-site .device/wheels/*.whl .device/gdn/*.whl 2>&1 \
  | grep -v "already exists"
[ -d /tmp/gdn-site/tilelang ] || tar xJf .device/gdn/tilelang-z3.tar.xz -C /tmp/gdn-site
export PYTHONPATH=/tmp/gdn-site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, tilelang, fla; print('torch', torch.__version__, 'triton', triton.__version__,
  'tilelang', tilelang.__version__, 'fla', fla.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
# Gradients first (the figures still missing), then the rest: each first use autotunes fla's kernels for its dtype
# and shape (fla 0.6.0 ships no tuned configs): 1-2 s per configuration, minutes in all on a fresh machine (read
# as hangs on 2026-12-04; gdn_probe.py showed tuning on 2026-12-05). Each kernel's tuning result is printed
# (TRITON_PRINT_AUTOTUNING) and every thread's stack is dumped after 100 s in one test (faulthandler_timeout).
export TRITON_PRINT_AUTOTUNING=1  # each kernel's tuning printed
source benchmarks/device_autotune.sh  # tuning results of earlier calls carried (.device/triton-autotune.tar.gz), returned at the end
# First, where fla's first bf16 calls spend their time: every autotuning configuration named before it runs,
# stacks after 30 s without progress (GDN_PROBE_S seconds at most, default 90; 0: none)
PROBE=${GDN_PROBE_S:-90}
[ "$PROBE" -gt 0 ] && timeout -s ABRT $PROBE python3 -X faulthandler benchmarks/gdn_probe.py --head-dims 64,32 --backward \
  --stall-s 30 --out "$OUT/gdn_probe.json" > "$OUT/gdn_probe.log" 2>&1; [ "$PROBE" -gt 0 ] && grep -E "^call|^\{|took [0-9.]{2,}" "$OUT/gdn_probe.log" | tail -n 12
P=${GDN_PARITY_S:-300}  # 0: no parity tests, the bench alone
# GDN_K: only the tests that pytest's -k expression selects, in one run of P seconds (e.g. GDN_K=hybrid); else two
# groups, the gradients and `auto` tests (and the hybrid step under autocast) in 3/5 of P, the rest after
if [ "$P" -gt 0 ] && [ -n "${GDN_K:-}" ]; then
  timeout $P python3 -m pytest -v -s --durations=0 -o faulthandler_timeout=100 tests/gpu/test_gdn_parity.py -k "$GDN_K" \
    > "$OUT/gdn_parity.log" 2>&1
elif [ "$P" -gt 0 ]; then
  timeout $((P * 3 / 5)) python3 -m pytest -v -s --durations=0 -o faulthandler_timeout=100 tests/gpu/test_gdn_parity.py \
    -k "gradients or auto" > "$OUT/gdn_parity.log" 2>&1
  timeout $((P - SECONDS > 30 ? P - SECONDS : 30)) python3 -m pytest -v -s --durations=0 -o faulthandler_timeout=100 \
    tests/gpu/test_gdn_parity.py -k "not gradients and not auto" >> "$OUT/gdn_parity.log" 2>&1
fi
[ "$P" -gt 0 ] && grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$OUT/gdn_parity.log" | tail -n 20
# SIGABRT at the limit: Python's faulthandler prints every thread's stack, so a hang says where it hangs
[ "${GDN_VARIANTS:-}" != none ] && timeout -s ABRT $((LIMIT - 10 - SECONDS)) python3 -X faulthandler benchmarks/train_bench.py --layouts qwen3next-1b --variants ${GDN_VARIANTS:-compile:full,eager:full} \
  --budget-s $((LIMIT - 90 - SECONDS)) --out "$OUT/train_bench_gdn.json" ${GDN_BENCH_ARGS:-} > "$OUT/train_bench_gdn.log" 2>&1
[ "${GDN_VARIANTS:-}" != none ] && tail -n 25 "$OUT/train_bench_gdn.log"
return_autotune "$OUT"
