#!/usr/bin/env bash
# The documented soak run: the steady-load test of tests/process.rs for 10 minutes (50 req/s
# against a fake Flowise, a ChatflowAccess change every 5 s, RSS of the flowgate process sampled
# from /proc). The test command runs the same test for one minute.
#
#   scripts/soak.sh            # 600 s
#   scripts/soak.sh 1800       # another duration, in seconds
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export FLOWGATE_CACHE=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLOWGATE_CACHE/target}

scripts/local-cluster.sh start
eval "$(scripts/local-cluster.sh env)"
scripts/flowise.sh start
eval "$(scripts/flowise.sh env)"

FLOWGATE_SOAK_SECS=${1:-600} cargo test --test process \
  steady_load_with_access_changes_has_no_errors_and_flat_memory -- --nocapture
