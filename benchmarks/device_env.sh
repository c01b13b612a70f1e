# Sourced at the top of every script run on a lent GPU machine (no network there), from the project
# root with `.device` carried (prepared as ../shared/device/README.md says). Installs the carried
# wheels into /tmp/site, builds the mamba-ssm/causal-conv1d kernels in the background unless they are
# built, being built, or carried back, and sets PYTHONPATH. `wait_for_kernels` blocks until the
# kernels are ready (returns 1 if the build failed); `return_kernels` sends the built wheels back once.
#
# Saving the build (341 s of a session's 1,800 s of device time; causal-conv1d alone takes 284 s):
# `return_kernels` puts each built wheel in $KERNELS_OUT as xz-compressed parts of 15 MiB (the device returns
# files of at most 16 MiB); copy the parts of one or both wheels into .device/kernel-wheels/ here
# (causal-conv1d's 26 MB saves the most; both and .device exceed the 64 MiB a call carries), and later
# calls install them and build only what is missing or does not import (another torch on the machine).
# The rungs' corpus may travel as .device/corpus-tokens.tar.xz (3.8 MB instead of 34 MB), unpacked here.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# The folder the device returns, fixed by the outermost script: a script run inside another's WHILE_BUILDING or
# AFTER_BUILD with its own OUT (a folder the outer one tars) must not pack the 65 MB of wheels there (2026-12-05)
export KERNELS_OUT=${KERNELS_OUT:-$OUT}
[ -d .device/corpus-tokens ] || [ ! -f .device/corpus-tokens.tar.xz ] || tar xJf .device/corpus-tokens.tar.xz -C .device
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl $(ls .device/f8/*.whl 2> /dev/null) \
  2>&1 | grep -v "already exists"
export PYTHONPATH=/tmp/site:$PWD
# Triton keeps its autotuning results on disk (its cache in ~/.triton): later processes on a warm machine skip
# the tuning of mamba-ssm's and fla's kernels (2 minutes of a hybrid's first training steps at 1B), and calls
# that carry .device/triton-autotune.tar.gz start from an earlier call's (`return_autotune DIR`)
source "$(dirname "${BASH_SOURCE[0]}")/device_autotune.sh"  # beside this file: also when sourced from another tree
carried_kernels() {  # install what .device/kernel-wheels holds (wheels, or <wheel>.xz.part-* from return_kernels); print what imports
  local dir=/tmp/kernels/carried
  rm -rf $dir && mkdir -p $dir
  local whl
  for whl in $(ls .device/kernel-wheels/*.whl.xz.part-* 2> /dev/null | sed 's/\.xz\.part-[a-z]*$//' | sort -u); do
    cat "$whl".xz.part-* | xz -d > "$dir/$(basename "$whl")"
  done
  cp .device/kernel-wheels/*.whl $dir/ 2> /dev/null
  ls $dir/*.whl > /dev/null 2>&1 || return 0
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $dir/*.whl > /dev/null 2>&1
  python3 -c "import torch, causal_conv1d_cuda" 2> /dev/null && echo causal_conv1d  # torch first: it loads libc10
  python3 -c "import torch, selective_scan_cuda, mamba_ssm" 2> /dev/null && echo mamba_ssm
}
build_missing() {  # $1: what imports already; builds the rest as .device/build_kernels.sh does, then READY
  set -u
  mkdir -p /tmp/kernels/wheels && cd /tmp/kernels || return 1
  export BUILD_ONLY_ARCH=${BUILD_ONLY_ARCH:-90} MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=8 NVCC_THREADS=2
  local pids=() name
  for name in causal_conv1d mamba_ssm; do
    case " $1 " in *" $name "*) continue ;; esac
    tar xzf "$OLDPWD/.device/$name-patched.tar.gz" || { echo "no $name source in .device" | tee FAILED; return 1; }
    local dir=$(ls -d ${name}-*/ | head -1)
    python3 -m pip wheel --no-deps --no-build-isolation --no-index -w /tmp/kernels/wheels "./$dir" > "$name.log" 2>&1 &
    pids+=($!)
  done
  for pid in ${pids[@]+"${pids[@]}"}; do wait $pid || { echo "build failed (logs in /tmp/kernels)" | tee FAILED; return 1; }; done
  ls wheels/*.whl > /dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl
  touch READY; echo "kernels ready in /tmp/site (carried: ${1:-none})"
}
if [ ! -f /tmp/kernels/READY ] && ! pgrep -f build_missing > /dev/null; then
  mkdir -p /tmp/kernels && rm -f /tmp/kernels/FAILED
  have=$(carried_kernels | xargs)
  [ -n "$have" ] && echo "kernels carried: $have"
  export -f build_missing  # a session of its own: the build goes on when this call ends (the machine stays warm)
  setsid nohup bash -c 'build_missing "$0"' "$have" > "$OUT/kernels_build.log" 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
wait_for_kernels() {
  while [ ! -f /tmp/kernels/READY ] && [ ! -f /tmp/kernels/FAILED ]; do sleep 5; done
  [ -f /tmp/kernels/FAILED ] && { cat /tmp/kernels/FAILED; return 1; }
  return 0
}
return_kernels() {  # once per machine: each wheel built here as <wheel>.xz.part-aa, -ab, ... in $KERNELS_OUT (15 MiB each)
  [ -f /tmp/kernels/READY ] && [ ! -f /tmp/kernels/RETURNED ] && ls /tmp/kernels/wheels/*.whl > /dev/null 2>&1 || return 0
  local whl parts=/tmp/kernels/parts
  for whl in /tmp/kernels/wheels/*.whl; do  # a wheel's parts reach $KERNELS_OUT only whole (a call cut short mid-xz)
    rm -rf $parts && mkdir -p $parts && xz -T0 -6 -c "$whl" | split -b 15M - "$parts/$(basename "$whl").xz.part-" \
      && mv $parts/* "$KERNELS_OUT"/
  done
  touch /tmp/kernels/RETURNED; ls -la "$KERNELS_OUT"/*.whl.xz.part-*
}
