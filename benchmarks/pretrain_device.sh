#!/usr/bin/env bash
# Issue 5's GPU run: a short pretraining of a ~380M hybrid on the Debian-docs corpus, 2 GPUs
# (device kind nvidia-h200-x2), FSDP2 + bf16, mamba-ssm kernels, cuDNN attention. No network there.
# Prepare on the CPU machine, then carry `.device`:
#   mkdir -p .device && cp ../shared/device/* .device/ && bash ../shared/device/fetch_wheels.sh tokenizers
#   composer-text fetch-corpus --output /tmp/docs
#   composer-text train-tokenizer --input /tmp/docs --vocab-size 8192 --output .device/run/tokenizer.json
#   python -c "from composer.data.text import CorpusConfig as C; import shutil; shutil.copytree(C(path='/tmp/docs', \
#     tokenizer='.device/run/tokenizer.json').open().cache_path, '.device/run/docs-bpe8192')"
# Each call stays under the device's 10-minute limit; results under $OUT:
#   bash benchmarks/pretrain_device.sh smoke   # a tiny 2-GPU run (starts the kernel build)
#   bash benchmarks/pretrain_device.sh         # the 350M-class run: torch scan while the kernels build, then kernels
set -u
source benchmarks/device_env.sh
DATA="data.path=.device/run/docs-bpe8192 data.tokenizer=.device/run/tokenizer.json data.val_tokens=100000"
run2() { torchrun --standalone --nproc_per_node=2 -m composer.apps.pretrain "$@"; }

if [ "${1:-main}" = smoke ]; then
  # the code path on CUDA/NCCL with the pure-PyTorch Mamba-2 (no kernels needed yet)
  timeout 240 bash -c "$(declare -f run2); run2 $DATA name=smoke model.pattern='M-*-M-' model.d_model=256 \
    model.mamba2.impl=torch seq_len=512 trainer.batch_size=16 trainer.micro_batch_size=4 \
    trainer.max_tokens=491520 trainer.eval_every=30 trainer.ckpt_every=30 trainer.progress=false \
    export=false needle=false leaderboard=null hydra.run.dir=$OUT/smoke" > "$OUT/smoke.log" 2>&1
  echo "smoke exit $?"; grep -v "^W1\|\*\*\*\*" "$OUT/smoke.log" | tail -6
  exit 0
fi

python3 -m composer.apps.extrapolate pattern='M-*-M-' target=350m seq_len=2048 hydra.run.dir="$OUT/extrapolate" | tee "$OUT/extrapolate.txt"
rm -rf "$OUT/extrapolate/.hydra"
report() {  # median throughput and MFU over the logged intervals after the first two
  python3 - "$OUT/$1" <<'PY'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
logged = [r for r in rows if "train/tokens_per_s" in r]
train = logged[2:] or logged  # skip the warm-up intervals
print("steps", max(r["step"] for r in rows), "median tokens/s", round(statistics.median(r["train/tokens_per_s"] for r in train)),
      "median MFU", round(statistics.median(r.get("train/mfu", 0) for r in train), 4))
print("eval", [(r["step"], round(r["eval/loss"], 4)) for r in rows if "eval/loss" in r])
PY
}
# The grown model (24 layers, d_model 1536, 369M non-embedding parameters) with the 8K BPE: batch
# 64 x 2048 tokens (micro-batches of 4 per GPU, 8 accumulated). `timeout -s TERM` ends a run through
# the preemption path (checkpoint, then stop), so every run leaves its metrics.
pretrain() {  # name, seconds, extra overrides
  local name=$1 seconds=$2; shift 2
  timeout -s TERM "$seconds" torchrun --standalone --nproc_per_node=2 -m composer.apps.pretrain \
    --config-path "$OUT/extrapolate" --config-name pretrain $DATA model.vocab_size=8192 \
    model.attention.backend=cudnn trainer.batch_size=64 trainer.micro_batch_size=4 trainer.progress=false \
    leaderboard=$OUT/leaderboard.jsonl hydra.run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name exit $?"; grep -v "^W1\|\*\*\*\*" "$OUT/$name.log" | tail -6; report "$name"
  rm -rf "$OUT/$name/checkpoint" "$OUT/$name/.hydra" "$OUT/$name/model"  # the device returns few files
}
# While the kernels build: the pure-PyTorch Mamba-2 scan, 48 steps or 180 s.
pretrain torch_scan 180 model.mamba2.impl=torch trainer.max_tokens=6291456 trainer.eval_every=0 trainer.ckpt_every=0 \
  export=false needle=false
wait_for_kernels || exit 1
# With mamba-ssm's fused SSD kernels and causal-conv1d: 128 steps, or until the 10-minute call ends.
pretrain pretrain_350m $((560 - SECONDS)) model.mamba2.impl=kernels trainer.max_tokens=16777216 \
  trainer.eval_every=64 trainer.ckpt_every=64 needle=false
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/gpu.txt"
