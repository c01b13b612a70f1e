#!/usr/bin/env bash
# Issue 7's search-throughput call on a lent GPU (no network; no Mamba kernels built: proxies run
# the pure-PyTorch Mamba-2 path). From the project root with `.device` prepared
# (../shared/device/README.md; fetch_wheels.sh with `tokenizers pytest iniconfig pluggy packaging
# tqdm pyyaml`) and carried. Prints the tables last; logs and JSON land in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 170 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_cuda_graph_parity.py > "$OUT/parity.log" 2>&1
tail -4 "$OUT/parity.log"
timeout ${BENCH_S:-190} python3 benchmarks/proxy_bench.py --out "$OUT/proxy_bench.json" ${BENCH_ARGS:-} > "$OUT/proxy_bench.log" 2>&1
timeout $((590 - SECONDS)) python3 benchmarks/search_throughput.py --workers ${WORKERS:-2} --seconds $((540 - SECONDS)) \
  --out "$OUT/search" -- evaluator=mad space=long ${SEARCH_ARGS:-} > "$OUT/search_throughput.log" 2>&1
rm -rf "$OUT/search/run/trials"
tail -3 "$OUT/search_throughput.log"; grep -v Warn "$OUT/parity.log" | grep -E "err|one at a time" ; cat "$OUT/proxy_bench.log" | grep -v -i warn | tail -20
