#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the ledger tests and local runs.
#
#   scripts/postgres.sh start   # idempotent: creates the cluster and the database `flowgate`
#   scripts/postgres.sh stop
#   scripts/postgres.sh status
#   scripts/postgres.sh env     # prints: export FLOWGATE_TEST_POSTGRES_URL=...
#   eval "$(scripts/postgres.sh env)"
#
# Data lives in ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}/postgres; the server listens on
# 127.0.0.1:25432 only, with trust authentication for loopback connections. PostgreSQL refuses
# to run as root: as root, the server runs as the `postgres` user (or `nobody`), and if that user
# cannot reach the cache directory (a home directory of mode 700) the data goes to
# /var/tmp/flowgate-postgres instead. When no server binaries are found, Debian's `postgresql`
# package is installed with apt-get.
set -euo pipefail

HOST=127.0.0.1
PORT=25432
DB=flowgate
URL="postgres://postgres@$HOST:$PORT/$DB"
CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

# The directory holding initdb, pg_ctl, postgres, pg_isready and psql.
find_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  return 1
}

install_postgres() {
  log "no PostgreSQL server binaries found; installing Debian's postgresql package"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
}

# As root, every server command runs as this unprivileged user.
run_user() {
  if [ "$(id -u)" -ne 0 ]; then
    return 0
  fi
  if id postgres >/dev/null 2>&1; then echo postgres; else echo nobody; fi
}

as_server_user() {
  local user
  user="$(run_user)"
  if [ -n "$user" ]; then
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

data_dir() {
  local user
  user="$(run_user)"
  if [ -n "$user" ] && ! runuser -u "$user" -- test -x "$CACHE" 2>/dev/null; then
    echo /var/tmp/flowgate-postgres
  else
    echo "$CACHE/postgres"
  fi
}

running() {
  "$BIN/pg_isready" -q -h "$HOST" -p "$PORT" -d postgres -U postgres
}

init_cluster() {
  local data="$1" user
  user="$(run_user)"
  log "creating a cluster in $data"
  mkdir -p "$data"
  chmod 700 "$data"
  [ -z "$user" ] || chown "$user" "$data"
  as_server_user "$BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C >"$data.initdb.log" 2>&1 || {
    cat "$data.initdb.log" >&2
    exit 1
  }
  # Loopback only; initdb's pg_hba.conf trusts local sockets and 127.0.0.1/::1 only.
  as_server_user tee -a "$data/postgresql.conf" >/dev/null <<EOF

# scripts/postgres.sh
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = '$data'
max_connections = 200
EOF
}

start() {
  if running; then
    log "already running on $HOST:$PORT"
  else
    local data
    data="$(data_dir)"
    [ -f "$data/PG_VERSION" ] || init_cluster "$data"
    as_server_user "$BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null || {
      tail -n 20 "$data/server.log" >&2
      exit 1
    }
    log "started on $HOST:$PORT (data: $data)"
  fi
  if [ "$("$BIN/psql" -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    "$BIN/psql" -h "$HOST" -p "$PORT" -U postgres -d postgres -qc "CREATE DATABASE $DB" >/dev/null
    log "created database $DB"
  fi
}

stop() {
  local data
  data="$(data_dir)"
  if [ -f "$data/postmaster.pid" ]; then
    as_server_user "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    log "stopped"
  else
    log "not running from $data"
  fi
}

case "${1:-}" in
  env)
    echo "export FLOWGATE_TEST_POSTGRES_URL=$URL"
    exit 0
    ;;
  start | stop | status) ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac

BIN="$(find_bin)" || { install_postgres && BIN="$(find_bin)"; } || {
  log "PostgreSQL server binaries not found even after installing"
  exit 1
}

case "$1" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running on $HOST:$PORT (data: $(data_dir))"; else echo "not running"; exit 3; fi
    ;;
esac
