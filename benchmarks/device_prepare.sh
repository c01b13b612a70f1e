#!/usr/bin/env bash
# Prepares `.device` for the GPU scripts here, on this side (it needs the network; the GPU machine has none),
# from the project root: one carry of `.device` (about 55 MB of the 64 MiB a call carries) then serves
# fidelity_device.sh, gdn_device.sh and the others. Takes about 3 minutes; a fresh checkout has none of it.
# Once `.device/kernel-wheels` holds built kernels (return_kernels, device_env.sh), `.device` is over the limit:
# carry the parts a script needs (printed at the end): the Mamba scripts all but .device/gdn, gdn_device.sh
# .device/wheels and .device/gdn.
#   .device/               ../shared/device's kernel sources and scripts, and its wheels (fetch_wheels.sh)
#   .device/corpus-tokens.tar.xz   the rung corpus of issue 15 as a byte-token cache: four Debian documentation
#                          packages at the versions the committed runs read (checked: token counts and the
#                          documents' hash of every run's summary.json), 3.7 MB
#   .device/triton-autotune.tar.gz  Triton's autotuning results (device_autotune.sh), tens of KB
#   .device/pt/            pytest and its three wheels from .device/gdn (GPU tests with the Mamba set), 0.6 MB
#   .device/f8/            torchao's wheel (float8 training, issue 18), 3.4 MB
#   .device/gdn/           tilelang and its runtime wheels, with pytest (gdn_device.sh): fla 0.6.0 refuses
#                          Gated DeltaNet's backward on Hopper with Triton 3.6 unless tilelang is installed
#                          (fla #640); tilelang's 50 MB wheel travels unpacked and xz-compressed with the one
#                          library of z3-solver it loads (libz3.so.4.15; without it tilelang, and so fla, fail
#                          to import: seen 2026-12-04), about 36 MB
# As root, Debian's package lists are refreshed first: stale lists fetch older package versions (a corpus
# 1,956 tokens short, seen 2026-12-04). SHARED (default ../shared/device) names the shared device folder.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/device}
[ -d "$SHARED" ] || { echo "device_prepare.sh: no $SHARED (the shared device folder; set SHARED=...)" >&2; exit 1; }
mkdir -p .device && cp -f "$SHARED"/* .device/ && chmod u+w .device/*
# Triton's tuning results of earlier calls (device_autotune.sh), committed so they outlive this folder: each call
# that returns newer ones replaces benchmarks/results/triton-autotune.tar.gz (a fresh .device had lost 94 tuned kernels)
cp -f benchmarks/results/triton-autotune.tar.gz .device/
bash "$SHARED/fetch_wheels.sh" > /dev/null

# The rungs' corpus, tokenised once here (the machine has no `datasets` to read text files)
PACKAGES=(python3.11-doc=3.11.2-6+deb12u9 git-doc=1:2.39.5-0+deb12u3 cmake-doc=3.25.1-1 sphinx-doc=5.3.0-4)
if [ ! -f .device/corpus-tokens.tar.xz ]; then
  [ "$(id -u)" = 0 ] && apt-get update -qq
  work=$(mktemp -d)
  rm -rf .device/corpus  # the tokens record their source as .device/corpus, as the committed runs do
  python3 -m composer.apps.text fetch-corpus --output .device/corpus $(printf -- '--package %s ' "${PACKAGES[@]}") \
    || { echo "device_prepare.sh: a pinned version is gone from Debian's lists; fetching the current ones" >&2
         rm -rf .device/corpus
         python3 -m composer.apps.text fetch-corpus --output .device/corpus $(printf -- '--package %s ' "${PACKAGES[@]%%=*}"); }
  python3 - "$work" <<'EOF'
import sys
from composer.data.text import CorpusConfig
from composer.runs.proxy import describe_corpus

corpus = CorpusConfig(path=".device/corpus", val_tokens=200_000, cache_dir=sys.argv[1]).open(seed=0)
seen = describe_corpus(corpus)
want = {"train_tokens": 17_181_855, "val_tokens": 227_643, "documents": "3d2da8cc5d5efd15"}
same = all(seen[k] == v for k, v in want.items())
print(f"corpus: {seen['train_tokens']:,} training, {seen['val_tokens']:,} validation tokens, documents {seen['documents']}: "
      + ("the committed runs' corpus" if same else f"NOT the committed runs' corpus ({want}): a new study only"))
corpus.cache_path.rename(corpus.cache_path.with_name("corpus-tokens"))
EOF
  tar cJf .device/corpus-tokens.tar.xz -C "$work" corpus-tokens
  rm -rf "$work" .device/corpus
fi

# Gated DeltaNet's kernels on Hopper (gdn_device.sh)
if [ ! -f .device/gdn/tilelang-z3.tar.xz ]; then
  rm -f .device/gdn/tilelang.tar.xz  # the earlier one, without z3
  mkdir -p .device/gdn && work=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d "$work" \
    tilelang==0.1.15 z3-solver==4.15.4.0 apache-tvm-ffi==0.1.12 torch-c-dlpack-ext==0.1.5 pytest pluggy iniconfig \
    packaging tqdm
  mkdir "$work/tl" && (cd "$work/tl" && unzip -q "$work"/tilelang-*.whl && unzip -q "$work"/z3_solver-*.whl 'z3/*') \
    && rm "$work"/tilelang-*.whl "$work"/z3_solver-*.whl
  # tilelang's libraries load z3/lib/libz3.so.4.15 (their RUNPATH); the wheel's second copy and binary stay behind
  rm "$work/tl/z3/lib/libz3.so" && ln -s libz3.so.4.15 "$work/tl/z3/lib/libz3.so"
  tar cf - -C "$work/tl" . | xz -T0 -6 > .device/gdn/tilelang-z3.tar.xz  # installed by unpacking (gdn_device.sh)
  mv "$work"/*.whl .device/gdn/ && rm -rf "$work"
fi
# pytest alone (.device/pt, 0.6 MB), for the GPU tests in a call that carries the Mamba set rather than .device/gdn:
# `python3 -m pytest --version || python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/pt/*.whl`
mkdir -p .device/pt && cp -f .device/gdn/{pytest,pluggy,iniconfig,packaging}-*.whl .device/pt/
# torchao for float8 training (the `float8` extra; installed by device_env.sh): the machine has none (seen 2026-12-04)
ls .device/f8/torchao-*.whl > /dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d .device/f8 'torchao>=0.13'
# BEFORE=<commit>: that commit's code in .device/before (1.6 MB), for `TREE=.device/before bash
# benchmarks/throughput_device.sh`: the code before a change measured beside it on one lease, since machines of one
# kind differ by about 15% and only ratios within a lease compare (used 2026-12-06)
if [ -n "${BEFORE:-}" ]; then
  rm -rf .device/before && mkdir -p .device/before
  git archive "$BEFORE" composer primitives search scaling configs launch benchmarks pyproject.toml \
    ':(exclude)benchmarks/results' | tar -x -C .device/before
  echo "code of $(git rev-parse --short "$BEFORE") in .device/before"
fi
du -sh .device .device/gdn; du -sb .device | awk '{printf "carry: %.1f of 64 MiB\n", $1 / 1048576}'
if [ -d .device/kernel-wheels ]; then  # too much for one carry: the two sets
  mamba=(.device/wheels .device/f8 .device/kernel-wheels .device/mamba_ssm-patched.tar.gz
         .device/causal_conv1d-patched.tar.gz .device/corpus-tokens.tar.xz .device/triton-autotune.tar.gz)
  [ -d .device/before ] && mamba+=(.device/before)  # the eighth and last path a call carries
  printf 'carry for the Mamba scripts (%s MiB): ["%s"]\n' "$(du -scm "${mamba[@]}" | tail -1 | cut -f1)" "$(IFS=,; echo "${mamba[*]}" | sed 's/,/", "/g')"
  printf 'carry for gdn_device.sh (%s MiB): [".device/wheels", ".device/gdn", ".device/triton-autotune.tar.gz"]\n' \
    "$(du -scm .device/wheels .device/gdn .device/triton-autotune.tar.gz | tail -1 | cut -f1)"
fi
