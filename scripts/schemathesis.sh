#!/usr/bin/env bash
# Fuzzes a running flowgate's HTTP API from its own OpenAPI document (tests/api_fuzz.rs runs this):
#
#   scripts/schemathesis.sh [--config-file=F] run ARGS...   # `schemathesis ... run ARGS...`
#   scripts/schemathesis.sh setup         # create the venv only (idempotent)
#
# schemathesis from PyPI lives in a venv under ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/schemathesis-venv,
# created once and rebuilt when the pinned version changes.
set -euo pipefail

readonly PY_DEPS=(schemathesis==4.32.5)

# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

ensure_venv() { venv_ensure schemathesis-venv schemathesis "${PY_DEPS[@]}"; }

usage() { sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" >&2; exit 2; }

main() {
  [[ $# -ge 1 ]] || usage
  local global=()
  while [[ ${1:-} == --config-file=* ]]; do global+=("$1"); shift; done
  case ${1:-} in
    setup) ensure_venv ;;
    run)
      ensure_venv
      shift
      # No telemetry upload, no colour codes in a test's captured output.
      export SCHEMATHESIS_TELEMETRY=false NO_COLOR=1
      exec "$VENV/bin/schemathesis" "${global[@]}" run "$@"
      ;;
    *) usage ;;
  esac
}

main "$@"; exit
