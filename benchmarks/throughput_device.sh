#!/usr/bin/env bash
# Issue 17's search throughput on a lent H200, from the project root with `.device` carried
# (benchmarks/device_prepare.sh; the kernels built by an earlier call on a warm machine, or carried back in
# .device/kernel-wheels, or built here first, then returned: return_kernels; Triton's tuning results come back in
# the tarball, for .device/). For each `evaluator=shapes` of RUNS (default
# "mad=3x1,1x6 mad_fast=1x6"), `search_throughput.py --sweep shapes --seconds $SECONDS_EACH (100) -- evaluator=...
# space=long $EXTRA`, in this call: the default and the fast preset side by side, the first shape of the first
# the "before" (the shape of the committed 167 per GPU-hour). Results come back as $OUT/throughput.tar.gz
# (each shape's throughput.json, GPU samples and search log, each sweep's sweep.json and table; no trials).
# TAG names this invocation's folders (/tmp/throughput/<evaluator><TAG>), so a second invocation in the same call
# (e.g. EXTRA=evaluator.trainer.compile=false TAG=-eager: the GPU presets compile) comes back beside the first, not over it. SWEEP_ARGS: more of
# search_throughput.py's arguments (e.g. --warmup-share 0.5 where compiling takes the first minute).
# TREE: measure another tree of the project instead, with its own TAG (.device/before, made by `BEFORE=<commit> bash
# benchmarks/device_prepare.sh` and carried): its folders come back beside this tree's, from the same machine. This
# tree's search_throughput.py and device_env.sh measure it (the same script for both sides), so a tree from before
# either works: e.g. BEFORE=a058a31, the last commit before issue 17's first change, with RUNS=mad=3x1 (its shape).
# WAIT=0: measure without waiting for the kernels to build (with EXTRA=evaluator.model.mamba2.impl=torch: the build
# window of a fresh machine put to use).
set -u
here=$PWD
if [ -n "${TREE:-}" ]; then ln -sfn "$PWD/.device" "$TREE/.device" && cd "$TREE"; fi
source "$here/benchmarks/device_env.sh"
[ "${WAIT:-1}" = 0 ] || wait_for_kernels || exit 1
mkdir -p /tmp/throughput
pack() {  # $OUT/throughput.tar.gz replaced whole after each sweep: a call cut at its limit still returns the sweeps done
  (cd /tmp && tar czf "$OUT/.throughput.tar.gz" throughput/*.log $(ls throughput/triton-autotune.tar.gz 2> /dev/null) \
    $(find throughput -maxdepth 3 \( -name '*.json' -o -name gpu.csv -o -name search.log \) -not -path '*/run/*')) \
    && mv "$OUT/.throughput.tar.gz" "$OUT/throughput.tar.gz"
}
for run in ${RUNS:-mad=3x1,1x6 mad_fast=1x6}; do
  evaluator=${run%%=*} shapes=${run#*=}
  name=$evaluator${TAG:-}
  # an earlier call's folder on a still-warm machine (already returned) moves aside: search_throughput.py measures
  # into an empty folder only, as a search there would resume and count the earlier trials again
  [ -e "/tmp/throughput/$name" ] && mkdir -p /tmp/throughput-old && mv "/tmp/throughput/$name" "/tmp/throughput-old/$name-$(date +%s)"
  python3 "$here/benchmarks/search_throughput.py" --sweep "$shapes" --seconds "${SECONDS_EACH:-100}" --out "/tmp/throughput/$name" ${SWEEP_ARGS:-} \
    -- "evaluator=$evaluator" space=long ${EXTRA:-} > "/tmp/throughput/$name.log" 2>&1
  echo "== evaluator=$evaluator ${EXTRA:-}"; grep -E "^\|" "/tmp/throughput/$name.log"
  pack
done
return_autotune /tmp/throughput
pack
return_kernels  # after the tarball: compressing the wheels takes a minute or more
