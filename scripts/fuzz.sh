#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (fuzz/, cargo-fuzz + libFuzzer): builds every target,
# then runs each for SECONDS (default 12). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/ (reproduce: scripts/fuzz.sh repro <target> <file>).
#
#   scripts/fuzz.sh [SECONDS]            # every target
#   scripts/fuzz.sh [SECONDS] TARGET...  # some targets
#   scripts/fuzz.sh repro TARGET FILE    # run one input again
#
# cargo-fuzz (pinned, from crates.io) is installed once under $FLOWGATE_CACHE/tools; builds go to
# $FLOWGATE_CACHE/fuzz-target and the growing corpus to $FLOWGATE_CACHE/fuzz-corpus/<target>
# (seeded from the committed fuzz/seeds/<target>). Works on a stable toolchain: cargo-fuzz needs
# `-Z` flags, which RUSTC_BOOTSTRAP=1 allows; no sanitizer (`-s none`, see fuzz/README.md).
set -euo pipefail

readonly CARGO_FUZZ_VERSION=0.13.2

root=$(cd "$(dirname "$0")/.." && pwd)
readonly CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
readonly TOOLS="$CACHE/tools"
readonly TARGET_DIR="$CACHE/fuzz-target"
readonly CORPUS="$CACHE/fuzz-corpus"
# Sanitizer for libFuzzer builds; `address` is for longer runs (fuzz/README.md).
readonly SANITIZER=${FLOWGATE_FUZZ_SANITIZER:-none}

log() { printf '[fuzz.sh] %s\n' "$*" >&2; }

ensure_cargo_fuzz() {
  local have
  have=$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null || true)
  [[ $have == "cargo-fuzz $CARGO_FUZZ_VERSION"* ]] && return 0
  mkdir -p "$TOOLS"
  exec 9>"$CACHE/cargo-fuzz.lock"
  flock 9
  have=$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null || true)
  if [[ $have != "cargo-fuzz $CARGO_FUZZ_VERSION"* ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    # Its own target dir: a shared CARGO_TARGET_DIR would mix this release build with the tests'.
    CARGO_TARGET_DIR="$TOOLS/target" cargo install --locked --root "$TOOLS" "cargo-fuzz@$CARGO_FUZZ_VERSION"
  fi
  exec 9>&-
}

fuzz() {
  # cargo-fuzz passes -Z flags to rustc/cargo; RUSTC_BOOTSTRAP lets a stable toolchain take them.
  (cd "$root/fuzz" && RUSTC_BOOTSTRAP=1 PATH="$TOOLS/bin:$PATH" cargo fuzz "$1" \
    --sanitizer "$SANITIZER" --debug-assertions --target-dir "$TARGET_DIR" "${@:2}")
}

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' "$root/fuzz/Cargo.toml" | grep -v '^flowgate-fuzz$'; }

# Inputs a cached corpus may grow to before it is minimised (libFuzzer's merge, keeping the
# inputs that add coverage): every run adds some, and loading them all takes a run's time.
CORPUS_MAX=4000

run_one() {
  local target=$1 seconds=$2 out
  mkdir -p "$CORPUS/$target" "$root/fuzz/seeds/$target"
  if (($(find "$CORPUS/$target" -type f | wc -l) > CORPUS_MAX)); then
    # libFuzzer's merge into a directory beside it (cargo fuzz cmin renames across the checkout
    # and the cache, which fails when they are on different filesystems), swapped in when done.
    log "$target: minimising its cached corpus"
    rm -rf "$CORPUS/$target.min"
    mkdir -p "$CORPUS/$target.min"
    if fuzz run "$target" "$CORPUS/$target.min" "$CORPUS/$target" -- -merge=1 >/dev/null 2>&1 &&
      [[ -n $(find "$CORPUS/$target.min" -type f -print -quit) ]]; then
      rm -rf "$CORPUS/$target"
      mv "$CORPUS/$target.min" "$CORPUS/$target"
    else
      rm -rf "$CORPUS/$target.min"
      log "$target: could not minimise; corpus kept"
    fi
  fi
  out=$(mktemp)
  # The cached corpus comes first: libFuzzer adds new inputs to the first directory only.
  if ! fuzz run "$target" "$CORPUS/$target" "$root/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    rm -f "$out"
    log "$target: CRASH (input in fuzz/artifacts/$target/)"
    return 1
  fi
  local runs rate
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -n 1)
  printf '%-10s %10s execs %8s execs/s  corpus %s\n' "$target" "${runs:-?}" "${rate:-?}" \
    "$(find "$CORPUS/$target" -type f | wc -l)"
  rm -f "$out"
}

main() {
  ensure_cargo_fuzz
  if [[ ${1:-} == repro ]]; then
    [[ $# -eq 3 ]] || { sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
    fuzz run "$2" "$(realpath "$3")"
    return
  fi
  local seconds=12
  if [[ ${1:-} =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
  local list=("$@")
  [[ ${#list[@]} -gt 0 ]] || mapfile -t list < <(targets)
  # The fuzzers build against fuzz/Cargo.lock: refused if it no longer matches the manifests
  # (a dependency added to flowgate and not to it), rather than resolved anew from crates.io.
  # Fetched for this machine's target only (cargo's own error says why if it fails).
  (cd "$root/fuzz" && cargo fetch --locked --quiet --target "$(rustc -vV | sed -n 's/^host: //p')") ||
    { log "could not fetch the fuzzers' dependencies as fuzz/Cargo.lock pins them (if it is out of date: 'cargo update --workspace' in fuzz/, and commit it)"; exit 1; }
  if [[ $# -eq 0 ]]; then
    fuzz build
  else
    for target in "${list[@]}"; do fuzz build "$target"; done
  fi
  local failed=0
  for target in "${list[@]}"; do
    run_one "$target" "$seconds" || failed=1
  done
  return "$failed"
}

main "$@"; exit
