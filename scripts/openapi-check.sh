#!/usr/bin/env bash
# Validates an OpenAPI document and real answers against it (tests/openapi.rs runs this):
#
#   scripts/openapi-check.sh DOC.json ANSWERS.json
#   scripts/openapi-check.sh setup       # create the venv only (idempotent)
#
# openapi-spec-validator and jsonschema from PyPI live in a venv under
# ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/openapi-venv, created once; the check itself is
# tests/fixtures/openapi_check.py.
set -euo pipefail

readonly PY_DEPS=(openapi-spec-validator==0.9.0 jsonschema==4.26.0)

root=$(cd "$(dirname "$0")/.." && pwd)
readonly CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
readonly VENV="$CACHE/openapi-venv"
# Written last: a venv without it is incomplete and gets rebuilt.
readonly MARKER="$VENV/.flowgate-ready"
readonly SPEC="${PY_DEPS[*]}"

log() { printf '[openapi-check.sh] %s\n' "$*" >&2; }

venv_ready() {
  [[ -f $MARKER && "$(<"$MARKER")" == "$SPEC" && -x $VENV/bin/python ]]
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
  exec 9>"$CACHE/openapi-venv.lock"
  flock 9
  venv_ready || create_venv
  exec 9>&-
}

main() {
  [[ $# -ge 1 ]] || { sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
  ensure_venv
  [[ $1 == setup ]] && return 0
  exec "$VENV/bin/python" "$root/tests/fixtures/openapi_check.py" "$@"
}

main "$@"; exit
