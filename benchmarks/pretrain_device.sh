#!/usr/bin/env bash
# Issue 5's GPU run: a short pretraining of a ~380M hybrid on the Debian-docs corpus, 2 GPUs
# (device kind nvidia-h200-x2), FSDP2 + bf16, mamba-ssm kernels, cuDNN attention. No network there.
# Prepare on the CPU machine, then carry `.device`:
#   mkdir -p .device && cp ../shared/device/* .device/ && bash ../shared/device/fetch_wheels.sh tokenizers
#   composer-text fetch-corpus --output /tmp/docs
#   composer-text train-tokenizer --input /tmp/docs --vocab-size 8192 --output .device/run/tokenizer.json
#   python -c "from composer.text import CorpusConfig as C; import shutil; shutil.copytree(C(path='/tmp/docs', \
#     tokenizer='.device/run/tokenizer.json').open().cache_path, '.device/run/docs-bpe8192')"
# Two calls (each under the device's 10-minute limit), results under $OUT:
#   bash benchmarks/pretrain_device.sh smoke   # starts the kernel build; a tiny 2-GPU run meanwhile
#   bash benchmarks/pretrain_device.sh main    # waits for the kernels; the 350M-class run
set -u
source benchmarks/device_env.sh
DATA="data.path=.device/run/docs-bpe8192 data.tokenizer=.device/run/tokenizer.json data.val_tokens=100000"
run2() { torchrun --standalone --nproc_per_node=2 -m composer.pretrain "$@"; }

if [ "${1:-main}" = smoke ]; then
  # the code path on CUDA/NCCL with the pure-PyTorch Mamba-2 (no kernels needed yet)
  timeout 240 bash -c "$(declare -f run2); run2 $DATA name=smoke model.pattern='M-*-M-' model.d_model=256 \
    model.mamba2.impl=torch seq_len=512 trainer.batch_size=16 trainer.micro_batch_size=4 \
    trainer.max_tokens=491520 trainer.eval_every=30 trainer.ckpt_every=30 trainer.progress=false \
    export=false needle=false leaderboard=null hydra.run.dir=$OUT/smoke" > "$OUT/smoke.log" 2>&1
  echo "smoke exit $?"; grep -v "^W1\|\*\*\*\*" "$OUT/smoke.log" | tail -6
  exit 0
fi

wait_for_kernels || exit 1
python3 -m composer.cli extrapolate pattern='M-*-M-' target=350m seq_len=2048 hydra.run.dir="$OUT/extrapolate" | tee "$OUT/extrapolate.txt"
# A short run: batch 64 x 2048 tokens (micro-batches of 4 per GPU, 8 accumulated), 200 steps.
# `timeout -s TERM` lands in the preemption path (checkpoint, then stop) if it runs long.
timeout -s TERM 460 torchrun --standalone --nproc_per_node=2 -m composer.pretrain \
  --config-path "$OUT/extrapolate" --config-name pretrain $DATA model.vocab_size=8192 \
  model.attention.backend=cudnn model.mamba2.impl=kernels trainer.batch_size=64 trainer.micro_batch_size=4 \
  trainer.max_tokens=26214400 trainer.eval_every=100 trainer.ckpt_every=100 trainer.progress=false \
  leaderboard=$OUT/leaderboard.jsonl hydra.run.dir="$OUT/pretrain_350m" > "$OUT/pretrain_350m.log" 2>&1
echo "pretrain exit $?"; grep -v "^W1\|\*\*\*\*" "$OUT/pretrain_350m.log" | tail -8
python3 - "$OUT/pretrain_350m" <<'PY'
import json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in rows if "train/tokens_per_s" in r][2:]  # skip warm-up intervals
print("steps", max(r["step"] for r in rows), "median tokens/s", round(statistics.median(r["train/tokens_per_s"] for r in train)),
      "median MFU", round(statistics.median(r.get("train/mfu", 0) for r in train), 4))
print("eval", [(r["step"], round(r["eval/loss"], 4)) for r in rows if "eval/loss" in r])
PY
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/gpu.txt"
