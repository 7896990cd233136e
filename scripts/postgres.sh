#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the ledger tests and local runs.
#
#   scripts/postgres.sh start   # idempotent: creates the cluster and the database `flowgate`
#   scripts/postgres.sh stop
#   scripts/postgres.sh status
#   scripts/postgres.sh env     # prints: export FLOWGATE_TEST_POSTGRES_URL=... (and _TLS=)
#   eval "$(scripts/postgres.sh env)"
#
# The server also speaks TLS, for the ledger's TLS tests: a throwaway CA in
# $FLOWGATE_TEST_POSTGRES_TLS (ca.crt; other-ca.crt, which signed nothing here; client.crt and
# client.key for the role flowgate_cert) signed the server's certificate, for DNS:localhost
# only. The role flowgate_tls connects over TLS only; flowgate_cert over TLS with its client
# certificate only. FLOWGATE_TEST_POSTGRES_URL itself says sslmode=disable, so that the other
# tests and the benchmarks measure what they always did.
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
URL="postgres://postgres@$HOST:$PORT/$DB?sslmode=disable"
CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
TLS_DIR="$CACHE/postgres-tls"

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

# Installs Debian packages $@.
install_packages() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

install_postgres() {
  log "no PostgreSQL server binaries found; installing Debian's postgresql package"
  install_packages postgresql
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

psql_admin() {
  "$BIN/psql" -h "$HOST" -p "$PORT" -U postgres -d postgres "$@"
}

# A CA's key and self-signed certificate, TLS_DIR/$1.{key,crt}, named $2.
new_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$TLS_DIR/$1.key" -out "$TLS_DIR/$1.crt" 2>/dev/null
}

# TLS_DIR/$1.{key,crt}: an EC P-256 key and a certificate for subject $2 with the extensions in
# $3 (one per line), signed by TLS_DIR/ca.
issue() {
  local name="$1"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
    -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" 2>/dev/null
  printf '%s\n' "$3" >"$TLS_DIR/$name.ext"
  openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$TLS_DIR/$name.ext" \
    -out "$TLS_DIR/$name.crt" 2>/dev/null
  rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}

# The certificates (made once), the server told to use them, and the two TLS roles.
ensure_tls() {
  local data changed="" file
  data="$(data_dir)"
  if [ ! -s "$TLS_DIR/client.crt" ]; then
    if ! command -v openssl >/dev/null; then
      log "no openssl to make the test certificates with; installing Debian's openssl package"
      install_packages openssl
    fi
    log "making a throwaway CA and certificates in $TLS_DIR"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    new_ca ca "flowgate test CA"
    new_ca other-ca "flowgate test CA that signed nothing"
    issue server "/CN=localhost" "subjectAltName=DNS:localhost
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
    issue client "/CN=flowgate_cert" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    chmod 600 "$TLS_DIR"/*.key
  fi
  for file in server.crt server.key ca.crt; do
    # Through the server user: the data directory is theirs, and may be out of our reach.
    if ! as_server_user cat "$data/$file" 2>/dev/null | cmp -s - "$TLS_DIR/$file"; then
      as_server_user tee "$data/$file" <"$TLS_DIR/$file" >/dev/null
      as_server_user chmod 600 "$data/$file"
      changed=1
    fi
  done
  if ! as_server_user grep -q '^# scripts/postgres.sh tls' "$data/postgresql.conf"; then
    printf '%s\n' "" "# scripts/postgres.sh tls" "ssl = on" "ssl_cert_file = 'server.crt'" \
      "ssl_key_file = 'server.key'" "ssl_ca_file = 'ca.crt'" |
      as_server_user tee -a "$data/postgresql.conf" >/dev/null
    # First match wins: the TLS roles' lines go before initdb's trust-everything ones.
    local hba
    hba="$(as_server_user cat "$data/pg_hba.conf")"
    printf '%s\n' "# scripts/postgres.sh tls" \
      "hostnossl all flowgate_tls,flowgate_cert all reject" \
      "hostssl all flowgate_tls $HOST/32 trust" \
      "hostssl all flowgate_cert $HOST/32 cert" \
      "$hba" | as_server_user tee "$data/pg_hba.conf" >/dev/null
    changed=1
  fi
  # A reload that did not bring TLS on before (or a server started without it) is tried again.
  [ "$(psql_admin -tAc "SHOW ssl")" = on ] || changed=1
  if [ -n "$changed" ]; then
    as_server_user "$BIN/pg_ctl" -D "$data" reload >/dev/null
    # The reload is asynchronous: wait until the server has TLS on.
    local i
    for i in $(seq 1 100); do
      [ "$(psql_admin -tAc "SHOW ssl")" != on ] || break
      sleep 0.1
    done
  fi
  # Checked every time, not only after a change.
  if [ "$(psql_admin -tAc "SHOW ssl")" != on ]; then
    log "TLS is not on (see $data/server.log); the TLS ledger tests need it"
    exit 1
  fi
  [ -z "$changed" ] || log "TLS on (certificates in $TLS_DIR)"
  local role
  for role in flowgate_tls flowgate_cert; do
    psql_admin -qc "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
          CREATE ROLE $role LOGIN SUPERUSER;
        END IF;
      END \$\$" >/dev/null
  done
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
  if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_admin -qc "CREATE DATABASE $DB" >/dev/null
    log "created database $DB"
  fi
  ensure_tls
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
    echo "export FLOWGATE_TEST_POSTGRES_URL='$URL'"
    echo "export FLOWGATE_TEST_POSTGRES_TLS='$TLS_DIR'"
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
