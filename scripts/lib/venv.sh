# Sourced by scripts that run a pinned Python tool (openapi-check.sh, schemathesis.sh).
#
#   venv_ensure NAME BIN DEP...
#
# makes sure ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/NAME is a venv with exactly DEP... installed
# and bin/BIN present, creating (or rebuilding, when the pins changed) it once; sets VENV.
# Parallel callers (test processes) serialise on a lock: one builds, the others wait.

venv_ensure() {
  local name=$1 bin=$2
  shift 2
  local cache="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
  VENV="$cache/$name"
  # Written last: a venv without it is incomplete and gets rebuilt.
  local marker="$VENV/.flowgate-ready" spec="$*"
  if ! _venv_ready "$marker" "$spec" "$bin"; then
    mkdir -p "$cache"
    exec 9>"$cache/$name.lock"
    flock 9
    if ! _venv_ready "$marker" "$spec" "$bin"; then
      printf '[venv] creating %s (%s)\n' "$VENV" "$spec" >&2
      rm -rf "$VENV"
      python3 -m venv "$VENV"
      "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@"
      echo "$spec" >"$marker"
    fi
    exec 9>&-
  fi
}

_venv_ready() {
  local marker=$1 spec=$2 bin=$3
  [[ -f $marker && "$(cat "$marker")" == "$spec" && -x $VENV/bin/$bin ]]
}
