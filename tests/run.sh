#!/usr/bin/env bash
# The test command: install what the tests need, then run them all (the README's Quick start and
# .ci/run call exactly this). Arguments go to pytest: `bash tests/run.sh -x tests/test_model.py`.
#
# Beyond pip packages (the `test` extra) the tests need three Debian packages: chromium (the HTML
# report's browser test), slurm-wlm and munge (the launcher's tests start a single-node SLURM of
# their own, whose daemons run as root). As root with apt-get, missing ones are installed; otherwise
# the script stops before pytest with one line saying what is missing: never a red suite for want
# of a package, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

missing=()
command -v chromium >/dev/null || missing+=(chromium)
PATH="$PATH:/usr/sbin:/sbin" command -v slurmctld >/dev/null || missing+=(slurm-wlm)
PATH="$PATH:/usr/sbin:/sbin" command -v munged >/dev/null || missing+=(munge)
root=$([ "$(id -u)" = 0 ] && echo yes || echo no)
if ((${#missing[@]})); then
  if [ "$root" = yes ] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: installing ${missing[*]} (apt-get)" >&2
    # Nothing starts here (no systemd; the tests' daemons use their own key, socket, config and ports).
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ "$root" = no ]; then
  echo "tests/run.sh: the launcher's tests run slurmctld and slurmd as root (tests/slurm.py): run this as root, e.g. in a container" >&2
  exit 1
fi

python3 -m pip install -q -e '.[test]'
exec python3 -m pytest -q "$@"
