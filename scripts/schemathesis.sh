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

readonly CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
readonly VENV="$CACHE/schemathesis-venv"
# Written last: a venv without it is incomplete and gets rebuilt.
readonly MARKER="$VENV/.flowgate-ready"
readonly SPEC="${PY_DEPS[*]}"

log() { printf '[schemathesis.sh] %s\n' "$*" >&2; }

venv_ready() {
  [[ -f $MARKER && "$(<"$MARKER")" == "$SPEC" && -x $VENV/bin/schemathesis ]]
}

create_venv() {
  log "creating $VENV ($SPEC)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "${PY_DEPS[@]}"
  echo "$SPEC" >"$MARKER"
}

ensure_venv() {
  venv_ready && return 0
  mkdir -p "$CACHE"
  # Parallel test processes may all call this; one creates the venv, the others wait for it.
  exec 9>"$CACHE/schemathesis-venv.lock"
  flock 9
  venv_ready || create_venv
  exec 9>&-
}

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
