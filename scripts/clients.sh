#!/usr/bin/env bash
# The official Flowise clients, installed into caches under $FLOWGATE_CACHE/clients for
# tests/real_clients.rs: the npm `flowise-sdk` (1.0.9) and the PyPI `flowise` client (1.0.4).
#
#   scripts/clients.sh setup   # install (idempotent)
#   scripts/clients.sh env     # print the exports the tests read
set -euo pipefail

cache=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/clients
case "${1:-}" in
  setup)
    mkdir -p "$cache/node" "$cache/python"
    if [ ! -d "$cache/node/node_modules/flowise-sdk" ]; then
      (cd "$cache/node" && npm init -y >/dev/null &&
        npm install --before="2026-11-20T00:00:00Z" --no-audit --no-fund flowise-sdk@1.0.9 >/dev/null)
    fi
    if [ ! -x "$cache/python/venv/bin/python" ]; then
      python3 -m venv "$cache/python/venv"
    fi
    if ! "$cache/python/venv/bin/python" -c 'import flowise' 2>/dev/null; then
      # Pinned whole, from `pip freeze` of the venv the tests passed with.
      "$cache/python/venv/bin/pip" install --quiet certifi==2026.10.19.post1 charset-normalizer==3.5.2 flowise==1.0.4 idna==3.20 requests==2.34.2 urllib3==2.8.0
    fi
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
