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

# Every package pinned (from `pip freeze` of the venv the tests passed with), so a fresh machine
# gets the same validators.
readonly PY_DEPS=(
  annotated-types==0.8.0
  attrs==26.1.0
  jsonschema==4.26.0
  jsonschema-path==0.5.0
  jsonschema-specifications==2025.9.1
  lazy-object-proxy==1.13.0
  openapi-schema-validator==0.9.0
  openapi-spec-validator==0.9.0
  pathable==0.6.0
  pydantic==2.14.4
  pydantic-settings==2.16.3
  pydantic_core==2.50.5
  python-dotenv==1.2.4
  PyYAML==6.0.4
  referencing==0.37.0
  rfc3339-validator==0.1.4
  rpds-py==2026.9.1
  six==1.17.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0
)

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
