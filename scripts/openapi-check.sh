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
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

ensure_venv() { venv_ensure openapi-venv python "${PY_DEPS[@]}"; }

main() {
  [[ $# -ge 1 ]] || { sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
  ensure_venv
  [[ $1 == setup ]] && return 0
  exec "$VENV/bin/python" "$root/tests/fixtures/openapi_check.py" "$@"
}

main "$@"; exit
