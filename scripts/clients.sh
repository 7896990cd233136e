#!/usr/bin/env bash
# The official Flowise clients, installed into caches under $FLOWGATE_CACHE/clients for
# tests/real_clients.rs: the npm `flowise-sdk` (1.0.9) and the PyPI `flowise` client (1.0.4).
#
#   scripts/clients.sh setup   # install (idempotent)
#   scripts/clients.sh env     # print the exports the tests read
set -euo pipefail
# shellcheck source=scripts/lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

cache=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/clients
# What a complete npm install holds, written last into its marker: an install cut short, or of
# other pins, is done again.
npm_spec='flowise-sdk@1.0.9 before 2026-11-20T00:00:00Z'
case "${1:-}" in
  setup)
    mkdir -p "$cache"
    exec 8>"$cache/node.lock"
    flock 8
    if [ "$(cat "$cache/node/.flowgate-ready" 2>/dev/null)" != "$npm_spec" ]; then
      # Into a scratch directory, moved into place whole.
      rm -rf "$cache/node.new"
      mkdir -p "$cache/node.new"
      (cd "$cache/node.new" && npm init -y >/dev/null &&
        npm install --before="2026-11-20T00:00:00Z" --no-audit --no-fund flowise-sdk@1.0.9 >/dev/null)
      echo "$npm_spec" >"$cache/node.new/.flowgate-ready"
      rm -rf "$cache/node"
      mv "$cache/node.new" "$cache/node"
    fi
    exec 8>&-
    # Pinned whole, from `pip freeze` of the venv the tests passed with.
    mkdir -p "$cache/python"
    venv_ensure clients/python/venv python certifi==2026.10.19.post1 charset-normalizer==3.5.2 \
      flowise==1.0.4 idna==3.20 requests==2.34.2 urllib3==2.8.0
    ;;
  env)
    echo "export FLOWGATE_CLIENTS_NODE_DIR=$cache/node"
    echo "export FLOWGATE_CLIENTS_PYTHON=$cache/python/venv/bin/python"
    ;;
  *)
    echo "usage: $0 setup|env" >&2
    exit 2
    ;;
esac
