# Sourced at the top of every script run on a lent GPU machine (no network there), from the project
# root with `.device` carried (prepared as ../shared/device/README.md says). Installs the carried
# wheels into /tmp/site, starts the mamba-ssm/causal-conv1d build in the background unless it is
# done or running (kernel wheels carried back in .device/kernel-wheels skip it), and sets PYTHONPATH.
# `wait_for_kernels` blocks until the build is ready (returns 1 if it failed).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -f /tmp/kernels/READY ] && ! pgrep -f build_kernels.sh > /dev/null; then
  if ls .device/kernel-wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/kernel-wheels/*.whl && mkdir -p /tmp/kernels && touch /tmp/kernels/READY
  else
    setsid nohup bash .device/build_kernels.sh > "$OUT/kernels_build.log" 2>&1 < /dev/null &
  fi
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
wait_for_kernels() {
  while [ ! -f /tmp/kernels/READY ] && [ ! -f /tmp/kernels/FAILED ]; do sleep 5; done
  [ -f /tmp/kernels/FAILED ] && { cat /tmp/kernels/FAILED; return 1; }
  return 0
}
