#!/usr/bin/env bash
# The whole test suite, from a fresh clone: provisions what the tests need (a real
# kube-apiserver + etcd, PostgreSQL, Flowise — each built or installed once and cached under
# $FLOWGATE_CACHE), then runs format and lint checks, unit tests and integration tests.
#
#   scripts/test.sh            # everything
#   scripts/test.sh crd_       # extra arguments go to `cargo test` (a filter, say)
#   FLOWGATE_FUZZ_SECONDS=0 scripts/test.sh   # without the cargo-fuzz step (default 12 s per target)
#   FLOWGATE_TARGET_BUDGET_GB=20               # the debug build cache is cleared past this size
#
# Services are left running for the next run (each `start` reuses what runs);
# stop them with `scripts/local-cluster.sh stop`, `scripts/postgres.sh stop`, `scripts/flowise.sh stop`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export FLOWGATE_CACHE=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLOWGATE_CACHE/target}
mkdir -p "$FLOWGATE_CACHE"

# A failing step ends the run; name the command, so a CI log says what broke.
trap 'printf "test.sh: failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND"' ERR

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

# scripts/dev.sh's flowgate shares the API server and Flowise, and its controller would
# reconcile the tests' Chatflows (in every namespace) as well as the tests' own.
dev_pid=$(cat "$FLOWGATE_CACHE/dev/flowgate.pid" 2>/dev/null || true)
dev_cmdline=""
if [[ $dev_pid =~ ^[0-9]+$ ]]; then
  dev_cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$dev_pid/cmdline" || true)
fi
if [[ $dev_cmdline == *"flowgate run"* ]]; then
  echo "test.sh: scripts/dev.sh's flowgate runs (pid $dev_pid) on the API server the tests use;" \
    "stop it first" >&2
  exit 1
fi

# Cargo never deletes what it built before: every change leaves its old test binaries and
# incremental state behind, and a long-lived cache grows without bound (the debug build once
# reached 57 GB and filled the disk). Past its budget a build starts over: one cold build, then
# warm again. The fuzz build (release, instrumented) grows the same way, more slowly.
budget_gb=${FLOWGATE_TARGET_BUDGET_GB:-20}
trim() { # DIR BUDGET_GB
  [[ -d $1 ]] || return 0
  local used_gb
  used_gb=$(du -s --block-size=1G "$1" | cut -f1)
  if ((used_gb > $2)); then
    step "$1 is ${used_gb} GB, over ${2} GB: starting that build over"
    rm -rf "$1"
  fi
}
trim "$CARGO_TARGET_DIR/debug" "$budget_gb"
trim "$FLOWGATE_CACHE/fuzz-target" $((budget_gb / 2))

# shellcheck source=lib/checkout.sh
. "$root/scripts/lib/checkout.sh"
same_checkout "$root"

step "local API server"
scripts/local-cluster.sh start
use_env scripts/local-cluster.sh
# What interrupted runs left behind (there is no garbage collector here); an hour old at least,
# so a run going on beside this one keeps its releases.
scripts/local-cluster.sh prune

step "PostgreSQL"
scripts/postgres.sh start
use_env scripts/postgres.sh

step "Flowise"
scripts/flowise.sh start
use_env scripts/flowise.sh

step "Helm (helm-sdkpy venv)"
scripts/helm.sh setup

step "OpenAPI checker (openapi-spec-validator venv)"
scripts/openapi-check.sh setup

step "API fuzzer (schemathesis venv)"
scripts/schemathesis.sh setup

step "promtool (from Debian's prometheus package)"
scripts/promtool.sh setup
use_env scripts/promtool.sh

step "Official Flowise clients (npm flowise-sdk, PyPI flowise)"
scripts/clients.sh setup

step "cargo fmt --check"
cargo fmt --all -- --check

# `bench-harness` adds the benchmark harness (benches/gateway/) to what is linted and unit-tested;
# it changes nothing in flowgate itself.
step "cargo clippy"
cargo clippy --all-targets --features bench-harness --locked -- -D warnings

step "cargo test"
cargo test --all-targets --features bench-harness --locked "$@"

# Coverage-guided fuzzing of the parsers: about a minute warm (first run: cargo-fuzz install and
# an instrumented release build). FLOWGATE_FUZZ_SECONDS=0 skips it.
fuzz_seconds=${FLOWGATE_FUZZ_SECONDS:-12}
if [[ $fuzz_seconds != 0 ]]; then
  step "cargo fuzz (${fuzz_seconds}s per target)"
  scripts/fuzz.sh "$fuzz_seconds"
fi

step "done"
