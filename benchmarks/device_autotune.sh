# Sourced by the device scripts: Triton's autotuning results travel between calls and sessions. mamba-ssm's and
# fla's kernels tune themselves on first use (fla 0.6.0 ships no tuned configs): minutes of a fresh machine's
# first steps, serialised across a search's workers (a fresh H100's first mad_fast evaluations took over 100 s,
# 2026-12-05). TRITON_CACHE_AUTOTUNING keeps the results on disk; `return_autotune DIR` packs them as
# DIR/triton-autotune.tar.gz (copy it over benchmarks/results/triton-autotune.tar.gz and .device/ here), and a
# later call that carries .device/triton-autotune.tar.gz starts from them, tuning only what is new (same Triton;
# sm_90 for H100 and H200).
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
TRITON_CACHE=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
mkdir -p "$TRITON_CACHE"
[ -f .device/triton-autotune.tar.gz ] && tar xzf .device/triton-autotune.tar.gz -C "$TRITON_CACHE" \
  && echo "autotune results carried: $(tar tzf .device/triton-autotune.tar.gz | grep -c autotune.json) kernels"
return_autotune() {
  (cd "$TRITON_CACHE" && find . -name '*.autotune.json' | tar czf "$1/triton-autotune.tar.gz" -T -)
  echo "autotune results returned: $(tar tzf "$1/triton-autotune.tar.gz" | grep -c autotune.json) kernels"
}
