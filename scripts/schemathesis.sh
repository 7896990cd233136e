#!/usr/bin/env bash
# Fuzzes a running flowgate's HTTP API from its own OpenAPI document (tests/api_fuzz.rs runs this):
#
#   scripts/schemathesis.sh [--config-file=F] run ARGS...   # `schemathesis ... run ARGS...`
#   scripts/schemathesis.sh setup         # create the venv only (idempotent)
#
# schemathesis from PyPI lives in a venv under ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/schemathesis-venv,
# created once and rebuilt when the pinned version changes.
set -euo pipefail

# Every package pinned, not only schemathesis: a fresh machine gets the tree the tests passed
# with (hypothesis and jsonschema_rs change how cases are generated). From `pip freeze` of that
# venv; move them together, with a full test run.
readonly PY_DEPS=(
  anyio==4.16.0
  certifi==2026.10.19.post1
  charset-normalizer==3.5.2
  click==8.5.1
  graphql-core==3.3.2
  harfile==0.6.0
  hypothesis==6.170.17
  hypothesis-graphql==0.13.5
  idna==3.20
  iniconfig==2.3.1
  jsonschema_rs==0.60.3
  markdown-it-py==4.3.0
  MarkupSafe==3.0.4
  mdurl==0.1.2
  packaging==26.3
  pluggy==1.7.0
  Pygments==2.21.0
  pyrate-limiter==4.5.1
  pytest==9.2.0
  PyYAML==6.0.4
  requests==2.34.2
  rich==15.0.0
  schemathesis==4.32.5
  sortedcontainers==2.4.0
  typing_extensions==4.16.0
  urllib3==2.8.0
  Werkzeug==3.1.9
)

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
