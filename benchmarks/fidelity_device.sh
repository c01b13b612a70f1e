#!/usr/bin/env bash
# Issue 15's GPU study on a lent H200, in slices that each fit one call (PART=search | fidelity).
# From the project root with `.device` prepared (../shared/device/README.md) and the rungs' text as a
# token cache in .device/corpus-tokens (the machine has no `datasets` to read text files): fetch
# `composer-text fetch-corpus --output /tmp/docs --package python3.11-doc --package git-doc
# --package cmake-doc --package sphinx-doc`, load it once here (composer.data.text.load_corpus, byte
# tokenizer) and copy the cache folder it names (17.4M tokens, 34 MB); `.device` carried.
# Each slice resumes from what earlier slices left in $R (committed) and writes what it adds under
# $OUT/issue15 (study databases, result and fidelity JSON, run summaries; no checkpoints, no trials).
set -u
source benchmarks/device_env.sh
R=benchmarks/results/issue15-2026-12-03
LIMIT=${LIMIT:-570}  # seconds this slice may use in all
NAME=issue15-gp-mad-n16
SEARCH=(evaluator=mad space=long strategy=gp name=$NAME evaluator.top_k=0 hydra.run.dir=/tmp/search
        leaderboard=/tmp/search/leaderboard.jsonl)
mkdir -p "$OUT/issue15/search" "$OUT/issue15/fidelity" /tmp/search /tmp/fidelity
cp -r "$R/search/." /tmp/search/ 2>/dev/null
cp -r "$R/fidelity/." /tmp/fidelity/ 2>/dev/null
python3 -c "import scipy, matplotlib; print('scipy', scipy.__version__, 'matplotlib', matplotlib.__version__)" 2>&1 | tail -1
if [ "$PART" = search ]; then
  [ -f /tmp/kernels/READY ] && W=3 || W=2  # the torch scan needs far more memory per worker
  timeout -s INT $((LIMIT - SECONDS)) python3 -m composer.apps.search "${SEARCH[@]}" n_trials=${N_TRIALS:-400} \
    workers=$W > "$OUT/issue15/search/search-$(date +%H%M%S).log" 2>&1
fi
if [ "$PART" = fidelity ]; then
  [ -f /tmp/kernels/READY ] || echo "kernels not built: the Mamba-2 torch path trains the rungs"
  [ -f /tmp/search/result.json ] || timeout -s INT 200 python3 -m composer.apps.search "${SEARCH[@]}" ++phase=finalize \
    > "$OUT/issue15/search/finalize-$(date +%H%M%S).log" 2>&1
  timeout -s INT $((LIMIT - SECONDS)) python3 -m composer.apps.fidelity search_dir=/tmp/search name=issue15-fidelity \
    top_k=8 random=6 workers=3 data.path=.device/corpus-tokens data.val_tokens=200000 seq_len=512 \
    rungs.0.name=r1 rungs.0.d_model=320 rungs.0.n_blocks=14 rungs.0.n_heads=5 rungs.0.mamba_d_state=64 \
    rungs.0.mamba_head_dim=32 rungs.0.mamba_chunk_size=64 rungs.0.tokens_per_param=${TPP:-1} \
    trainer.batch_size=64 trainer.cuda_graph=true trainer.ckpt_every=100 hydra.run.dir=/tmp/fidelity \
    leaderboard=/tmp/fidelity/leaderboard.jsonl > "$OUT/issue15/fidelity/fidelity-$(date +%H%M%S).log" 2>&1
fi
cd /tmp && cp search/{study.db,search.json,result.json,leaderboard.jsonl} "$OUT/issue15/search/" 2>/dev/null
cp fidelity/{study.db,fidelity.json,fidelity.png,leaderboard.jsonl} "$OUT/issue15/fidelity/" 2>/dev/null
find fidelity -name summary.json | while read -r f; do mkdir -p "$OUT/issue15/$(dirname "$f")"; cp "$f" "$OUT/issue15/$f"; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
for f in "$OUT"/issue15/*/*.log; do tail -n 3 "$f"; done
