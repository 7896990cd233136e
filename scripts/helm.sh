#!/usr/bin/env bash
# helm.sh — real Helm (the Helm v4 Go library, through PyPI's helm-sdkpy) for tests and local use.
# There is no `helm` binary in the package registries; helm-sdkpy ships Helm's library as a
# shared object with Python bindings. This script keeps it in a venv and runs scripts/helm.py.
#
# Usage: scripts/helm.sh <setup|lint|template|install|upgrade|uninstall|status> [args...]
#
#   setup                        Create the venv if missing (idempotent); nothing else.
#   lint CHART                   helm lint with the chart's values. Prints JSON; exit 1 on
#                                warnings or errors.
#   template CHART [opts]        Render and print the manifest (YAML). helm-sdkpy has no
#                                client-only rendering, so this installs into a scratch
#                                namespace on the API server and uninstalls at once; it refuses
#                                API servers not on loopback.
#   install RELEASE CHART [opts] helm install (no --wait). Prints the release as JSON.
#   upgrade RELEASE CHART [opts] helm upgrade (no --wait). Prints the release as JSON.
#   uninstall RELEASE [opts]     helm uninstall (no --wait). Prints the release as JSON.
#   status RELEASE [opts]        helm status. Prints the release as JSON.
#
#   opts: -n/--namespace NS, -f/--values FILE (YAML or JSON, repeatable),
#         --set-json JSON (an object merged over the files, repeatable), --release NAME (template)
#
# The cluster is the one KUBECONFIG names (`eval "$(scripts/local-cluster.sh env)"`).
# Errors: the message on stderr, starting with "helm <command>: ", exit 1; usage errors exit 2.
#
# The venv lives in ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/helm-venv. helm-sdkpy 0.1.32
# declares Python >= 3.12 but works on 3.11, so it is installed with --ignore-requires-python
# --no-deps, and its one dependency (cffi) separately. Helm's own cache/config/data directories
# go under the same cache unless HELM_*_HOME are set.
set -euo pipefail

readonly HELM_SDKPY=helm-sdkpy==0.1.32
readonly PY_DEPS=(cffi==2.1.1 PyYAML==6.0.3)

root=$(cd "$(dirname "$0")/.." && pwd)
readonly CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
readonly VENV="$CACHE/helm-venv"
# Written last: a venv without it is incomplete and gets rebuilt.
readonly MARKER="$VENV/.flowgate-ready"
readonly SPEC="$HELM_SDKPY ${PY_DEPS[*]}"

log() { printf '[helm.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

venv_ready() {
  [[ -f $MARKER && "$(<"$MARKER")" == "$SPEC" && -x $VENV/bin/python ]]
}

ensure_python() {
  if command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    return 0
  fi
  log "python3 with venv/ensurepip missing; installing Debian's python3-venv"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    python3 python3-venv
}

create_venv() {
  ensure_python
  log "creating $VENV ($SPEC)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --ignore-requires-python --no-deps "$HELM_SDKPY"
  "${pip[@]}" install "${PY_DEPS[@]}"
  # Loading the library proves the shared object works on this machine.
  "$VENV/bin/python" -c 'import helm_sdkpy; print("helm-sdkpy", helm_sdkpy.__version__, "loaded")' >&2
  echo "$SPEC" >"$MARKER"
}

ensure_venv() {
  venv_ready && return 0
  mkdir -p "$CACHE"
  # Parallel test processes all call this; one creates the venv, the others wait for it.
  exec 9>"$CACHE/helm-venv.lock"
  flock 9
  venv_ready || create_venv
  exec 9>&-
}

main() {
  [[ $# -ge 1 ]] || { sed -n '2,/^# The cluster/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
  ensure_venv
  [[ $1 == setup ]] && return 0
  export HELM_CACHE_HOME="${HELM_CACHE_HOME:-$CACHE/helm/cache}"
  export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-$CACHE/helm/config}"
  export HELM_DATA_HOME="${HELM_DATA_HOME:-$CACHE/helm/data}"
  exec "$VENV/bin/python" "$root/scripts/helm.py" "$@"
}

main "$@"; exit
