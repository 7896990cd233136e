#!/usr/bin/env bash
# promtool (Prometheus' rule checker and rule unit-tester), for the chart's PrometheusRule tests:
#
#   scripts/promtool.sh setup    # install it once under ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/tools/bin
#   scripts/promtool.sh env      # print `export FLOWGATE_PROMTOOL=...`
#
# It comes from Debian's `prometheus` package: the .deb is downloaded and only its promtool
# extracted (a static binary), so nothing is installed system-wide and no service is started.
set -euo pipefail

readonly CACHE=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}
readonly BIN="$CACHE/tools/bin/promtool"

log() { printf 'promtool.sh: %s\n' "$*" >&2; }

setup() {
  if [[ -x $BIN ]] && "$BIN" --version >/dev/null 2>&1; then
    return 0
  fi
  local scratch
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' RETURN
  log "extracting promtool from Debian's prometheus package (once)"
  # apt-get download writes into the current directory; `_apt` may not write to a root-owned
  # mktemp directory, which apt only warns about.
  # The package lists may be missing (a slim image): updated, as root, and then it is said why
  # the download failed.
  local sudo=()
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  (cd "$scratch" && apt-get download prometheus >/dev/null 2>&1) ||
    { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      (cd "$scratch" && apt-get download prometheus >/dev/null); }
  dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/root"
  mkdir -p "$(dirname "$BIN")"
  install -m 0755 "$scratch/root/usr/bin/promtool" "$BIN"
  log "$("$BIN" --version | head -1)"
}

case ${1:-} in
  setup) setup ;;
  env) printf 'export FLOWGATE_PROMTOOL=%q\n' "$BIN" ;;
  *)
    sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
