#!/usr/bin/env bash
# local-cluster.sh — a real kube-apiserver + etcd on loopback, for tests and local runs.
#
# Usage: scripts/local-cluster.sh <build|start|stop [--purge]|prune|env|status>
#
#   build   Build kube-apiserver v1.20.2 from Debian's `kubernetes` source package and cache
#           the binary at $CACHE/bin/kube-apiserver; kubectl too, into $CACHE/bin/kubectl, when
#           the machine has none (`env` then puts it on PATH). No-op when both are at hand.
#   start   Build if needed, then start etcd + kube-apiserver on 127.0.0.1 and write
#           $CACHE/cluster/kubeconfig. No-op when both are already running and ready, unless
#           the API server's certificate ends within 30 days: then both are restarted for a new
#           one (clients of the old CA, a run in progress, then fail: once a year).
#   stop    Stop both (TERM, then KILL). `stop --purge` also deletes all cluster state
#           (etcd data, certificates, token, service-account keys, logs, kubeconfig).
#   prune   Delete the chart releases' Services, ClusterRoles and ClusterRoleBindings that test
#           runs (scratch namespaces `chart-*`/`rbac-*`) left behind more than an hour ago.
#           Nothing else frees them here, and the Service range holds only 253 cluster IPs.
#   env     Print `export KUBECONFIG=...` and etcd's URL for tests (use:
#           eval "$(scripts/local-cluster.sh env)").
#   status  Say whether the cluster is up; exit 0 if it is, 1 if not.
#
# CACHE is ${FLOWGATE_CACHE:-$HOME/.cache/flowgate}. Everything the script needs (Go, etcd, ...)
# comes from Debian packages, which it installs when missing.
#
# Why a source build: there is no download site for Kubernetes binaries available to us, but
# Debian bookworm ships the full Kubernetes 1.20.2 tree (with vendor/) as a source package, and
# etcd 3.4 + Go 1.19 as binary packages.
#
# What a bare API server does NOT do: no kubelet/scheduler (Pods are stored, never run), no
# controller-manager (no garbage collection, no namespace finalization, no ServiceAccount token
# Secrets — use the TokenRequest API, e.g. `kubectl create token`).

set -euo pipefail

# --- Versions and fixed locations -------------------------------------------------------------

readonly K8S_SRC_PACKAGE=kubernetes
readonly K8S_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
readonly K8S_ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
# The upstream tarball is the same in every Debian revision of this version (only it is used).
readonly K8S_ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
readonly K8S_SRC_DIRNAME=kubernetes-1.20.2
readonly DEBIAN_SUITE=bookworm

# Fixed, non-default ports so we never collide with a "real" etcd (2379/2380) or apiserver (6443).
readonly ETCD_CLIENT_PORT=23790
readonly ETCD_PEER_PORT=23800
readonly APISERVER_PORT=26443
readonly HOST=127.0.0.1

readonly CACHE="${FLOWGATE_CACHE:-$HOME/.cache/flowgate}"
readonly BIN_DIR="$CACHE/bin"
readonly APISERVER_BIN="$BIN_DIR/kube-apiserver"
readonly KUBECTL_BIN="$BIN_DIR/kubectl"
readonly SRC_CACHE="$CACHE/src"          # downloaded source package files (kept: no refetch)
readonly APT_DIR="$CACHE/apt"            # private apt sources + lists (only during a fetch)
readonly BUILD_DIR="$CACHE/build"        # scratch build tree (deleted after a successful build)
readonly GO_CACHE_DIR="$CACHE/go-build"  # Go build cache (kept across failed builds only)
readonly CLUSTER_DIR="$CACHE/cluster"
readonly LOCK_FILE="$CACHE/local-cluster.lock" # serialises build/start/stop across processes

readonly ETCD_DATA="$CLUSTER_DIR/etcd"
readonly CERT_DIR="$CLUSTER_DIR/certs"
readonly TOKENS_FILE="$CLUSTER_DIR/tokens.csv"
readonly SA_KEY="$CLUSTER_DIR/sa.key"
readonly SA_PUB="$CLUSTER_DIR/sa.pub"
readonly CA_FILE="$CLUSTER_DIR/ca.crt"
readonly KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
readonly ETCD_LOG="$CLUSTER_DIR/etcd.log"
readonly APISERVER_LOG="$CLUSTER_DIR/kube-apiserver.log"
readonly ETCD_PID="$CLUSTER_DIR/etcd.pid"
readonly APISERVER_PID="$CLUSTER_DIR/kube-apiserver.pid"

readonly APISERVER_URL="https://$HOST:$APISERVER_PORT"
readonly ETCD_URL="http://$HOST:$ETCD_CLIENT_PORT"

readonly READY_TIMEOUT=60 # seconds to wait for etcd /health and apiserver /readyz
# Test runs leave their namespaces behind (this control plane has no namespace controller to
# empty a deleted one), so etcd's database only grows, and etcd refuses every write once it
# reaches its 2 GiB quota. A database past this size is started over at the next `start`: tests
# create everything they need.
readonly ETCD_MAX_DB_MB=${FLOWGATE_ETCD_MAX_DB_MB:-1024}
readonly STOP_TIMEOUT=15  # seconds between TERM and KILL

# --- Helpers ----------------------------------------------------------------------------------

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run as root, via sudo when we are not root already.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Install the Debian packages that are missing. apt-get update runs (once) only if needed.
ensure_packages() {
  local pkg missing=()
  for pkg in "$@"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Packages needed to run the cluster, and additionally to build the apiserver.
readonly RUNTIME_PACKAGES=(etcd-server openssl curl jq)
readonly BUILD_PACKAGES=(golang-go golang-github-modern-go-reflect2-dev rsync make tar gzip
  debian-archive-keyring)

# True if pid file $1 names a live process running executable $2 (guards against pid reuse).
pid_alive() {
  local pidfile=$1 exe=$2 pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  local running
  running=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary replaced on disk while running shows up as "PATH (deleted)".
  [[ ${running% (deleted)} == "$(readlink -f "$exe")" ]]
}

# True if process $1 exists and is not a zombie. The daemons are orphans once this script exits;
# if PID 1 (e.g. in a CI container) never reaps them, a dead one lingers as a zombie and
# `kill -0` alone would report it alive forever.
proc_running() {
  local stat
  # Not `$(<file)`: with `set -e`, bash 5.2 exits the whole script when that redirection fails
  # (a stale pid file names a process that is gone), even under `|| return`.
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # fields after "(comm)"; the first is the state
  [[ ${stat%% *} != Z ]]
}

# True if something accepts TCP connections on 127.0.0.1:$1 (pure bash, no ss/netstat needed).
port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Pids of running processes whose executable is named $1 and whose command line mentions
# 127.0.0.1:$2 — a daemon of a flowgate local cluster, possibly started from another cache dir.
our_daemons_on() {
  local name=$1 port=$2 dir pid cmdline
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [[ $(readlink "$dir/exe" 2>/dev/null) == */"$name"* ]] || continue
    cmdline=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
    [[ $cmdline == *"$HOST:$port"* || $cmdline == *"--secure-port $port"* ]] && echo "$pid"
  done
}

# Make sure port $2 is free for daemon $1: a leftover flowgate daemon of the same kind (from
# another cache dir, whose pid file we do not have) is stopped; anything else is an error.
claim_port() {
  local name=$1 port=$2 pid deadline
  port_in_use "$port" || return 0
  for pid in $(our_daemons_on "$name" "$port"); do
    log "port $port is held by a leftover flowgate $name (pid $pid); stopping it"
    kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  while port_in_use "$port" && ((SECONDS < deadline)); do sleep 0.2; done
  port_in_use "$port" && die "port $port is in use by another process"
  return 0
}

admin_token() {
  cut -d, -f1 "$TOKENS_FILE"
}

# curl against the apiserver as the admin user. -k: only used for probing/bootstrapping, the
# kubeconfig written for clients verifies the serving certificate against the CA.
api_curl() {
  curl -sk --max-time 5 -H "Authorization: Bearer $(admin_token)" "$@"
}

etcd_healthy() {
  curl -sf --max-time 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_ready() {
  [[ -f $TOKENS_FILE ]] || return 1
  [[ "$(api_curl "$APISERVER_URL/readyz" 2>/dev/null)" == ok ]]
}

# Wait until "$@" succeeds, at most READY_TIMEOUT seconds. On timeout, show the log tail and fail.
wait_for() {
  local what=$1 logfile=$2 pidfile=$3 exe=$4
  shift 4
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@"; do
    if ! pid_alive "$pidfile" "$exe"; then
      log "$what exited during startup; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$what failed to start"
    fi
    if ((SECONDS >= deadline)); then
      log "$what not ready after ${READY_TIMEOUT}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$what failed to become ready"
    fi
    sleep 0.5
  done
}

# Start "$@" detached (own session, so it outlives this script and the caller's Ctrl-C),
# logging to $2 (previous log kept as .1) and recording its pid in $1.
spawn() {
  local pidfile=$1 logfile=$2
  shift 2
  [[ -f $logfile ]] && mv -f "$logfile" "$logfile.1"
  # In a non-interactive shell the background child is not a process-group leader, so setsid
  # does not fork and $! is the daemon's own pid. Close fds 3-9 so the daemon holds neither our
  # lock (fd 9) nor any pipe of the caller (a test harness waiting for EOF would hang).
  setsid "$@" >"$logfile" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$pidfile"
}

# Stop the process in pid file $1 (TERM, then KILL after STOP_TIMEOUT), remove the pid file.
terminate() {
  local name=$1 pidfile=$2 exe=$3 pid
  if pid_alive "$pidfile" "$exe"; then
    pid=$(<"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while proc_running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if proc_running "$pid"; then
      log "$name did not exit after ${STOP_TIMEOUT}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while proc_running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      proc_running "$pid" && die "$name (pid $pid) survived KILL"
    fi
  fi
  rm -f "$pidfile"
}

# --- build ------------------------------------------------------------------------------------

# Print "URI SIGNED_BY" of the main Debian archive from the machine's deb822 sources, falling
# back to the public mirror and the standard keyring.
debian_mirror() {
  local sources=/etc/apt/sources.list.d/debian.sources uri="" key=""
  if [[ -r $sources ]]; then
    # First stanza whose Suites contain exactly "$DEBIAN_SUITE" (not bookworm-security etc.).
    read -r uri key < <(awk -v suite="$DEBIAN_SUITE" '
      function flush() { if (ok && uri != "" && !done) { print uri, key; done = 1 } ok = 0; uri = ""; key = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/      { uri = $2 }
      /^Signed-By:/ { key = $2 }
      /^Suites:/    { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { flush() }' "$sources") || true
  fi
  echo "${uri:-http://deb.debian.org/debian} ${key:-/usr/share/keyrings/debian-archive-keyring.gpg}"
}

# Whether the cached upstream tarball is the expected one; a wrong one is removed.
orig_checks_out() {
  if echo "$K8S_ORIG_SHA256  $SRC_CACHE/$K8S_ORIG_TARBALL" | sha256sum --check --quiet; then
    return 0
  fi
  rm -f "$SRC_CACHE/$K8S_ORIG_TARBALL"
  return 1
}

# Download the source package into SRC_CACHE using a private apt configuration: our own
# sources file (deb-src only), no sources.list.d, and package lists/caches under APT_DIR.
# The machine's apt configuration and state are left untouched.
fetch_source() {
  if [[ -f $SRC_CACHE/$K8S_ORIG_TARBALL ]]; then
    if orig_checks_out; then
      log "source tarball cached: $SRC_CACHE/$K8S_ORIG_TARBALL"
      return 0
    fi
    log "cached $K8S_ORIG_TARBALL does not have the expected SHA-256; fetching it again"
  fi
  local uri key
  read -r uri key < <(debian_mirror)
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$SRC_CACHE"
  echo "deb-src [signed-by=$key] $uri $DEBIAN_SUITE main" >"$APT_DIR/sources.list"
  local apt_opts=(
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    # The lists live in our cache dir, which apt's unprivileged _apt sandbox user may not be
    # able to write; download as the invoking user instead of warning about it.
    -o "APT::Sandbox::User=$(id -un)"
  )
  log "fetching source package $K8S_SRC_PACKAGE=$K8S_SRC_VERSION from $uri"
  apt-get "${apt_opts[@]}" -q update
  # A newer Debian revision replaces this one in the suite (a point release): its upstream
  # tarball is the same, and is what the checksum below holds it to.
  if ! (cd "$SRC_CACHE" && apt-get "${apt_opts[@]}" -q source --download-only \
    "$K8S_SRC_PACKAGE=$K8S_SRC_VERSION"); then
    log "$K8S_SRC_VERSION is no longer in $DEBIAN_SUITE; fetching its current revision"
    (cd "$SRC_CACHE" && apt-get "${apt_opts[@]}" -q source --download-only "$K8S_SRC_PACKAGE")
  fi
  [[ -f $SRC_CACHE/$K8S_ORIG_TARBALL ]] ||
    die "apt-get source did not produce $K8S_ORIG_TARBALL (found: $(ls "$SRC_CACHE"))"
  orig_checks_out || die "$K8S_ORIG_TARBALL does not have the expected SHA-256; removed"
  rm -rf "$APT_DIR" # the package lists (~20 MB) are only needed for this download
}

# Whether a kubectl is at hand: the machine's, or one built here (tests and scripts run it).
kubectl_at_hand() {
  command -v kubectl >/dev/null || [[ -x $KUBECTL_BIN ]]
}

cmd_build() {
  # What is missing: the apiserver, and kubectl where the machine has none (Debian ships none;
  # it comes from the same source tree).
  local what=()
  [[ -x $APISERVER_BIN ]] || what+=(cmd/kube-apiserver)
  kubectl_at_hand || what+=(cmd/kubectl)
  if [[ ${#what[@]} -eq 0 ]]; then
    log "kube-apiserver cached: $APISERVER_BIN"
    return 0
  fi
  ensure_packages "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
  fetch_source

  log "unpacking into $BUILD_DIR"
  rm -rf "$BUILD_DIR"
  mkdir -p "$BUILD_DIR"
  tar -xzf "$SRC_CACHE/$K8S_ORIG_TARBALL" -C "$BUILD_DIR"
  local src="$BUILD_DIR/$K8S_SRC_DIRNAME"
  [[ -d $src ]] || die "expected $src after unpacking $K8S_ORIG_TARBALL"

  # Required fix: the vendored github.com/modern-go/reflect2 v1.0.1 is broken under Go >= 1.18
  # (the apiserver SIGSEGVs in runtime.mapiterinit on its first real request). Swap in Debian's
  # reflect2 1.0.2, which supports the new runtime.
  local reflect2="$src/vendor/github.com/modern-go/reflect2"
  rm -rf "$reflect2"
  cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2 "$reflect2"
  find "$reflect2" -name '*_test.go' -delete

  log "building ${what[*]} (takes several minutes)"
  local start=$SECONDS
  (
    cd "$src"
    # As Debian's debian/rules does: a GOPATH inside the tree that maps k8s.io/kubernetes to it.
    # The version stamp (v1.20.2, commit faecb19) comes from the `git archive` placeholders
    # already expanded in hack/lib/version.sh; no git checkout needed. Debian's own patches only
    # touch kubectl, so they are not applied.
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    export GOPATH="$src/.go" CGO_ENABLED=0 GOCACHE="$GO_CACHE_DIR" GOFLAGS=
    export PATH="/usr/lib/go/bin:$PATH" # Debian's Go (1.19), whatever else is on PATH
    make WHAT="${what[*]}"
  )
  mkdir -p "$BIN_DIR"
  local cmd bin out
  for cmd in "${what[@]}"; do
    bin=${cmd#cmd/}
    out="$src/_output/bin/$bin"
    [[ -x $out ]] || die "build finished without producing $out"
    cp "$out" "$BIN_DIR/$bin.tmp"
    mv -f "$BIN_DIR/$bin.tmp" "$BIN_DIR/$bin" # atomic: a half-copied binary is never "cached"
  done
  rm -rf "$BUILD_DIR" "$GO_CACHE_DIR"
  log "built ${what[*]} into $BIN_DIR in $((SECONDS - start))s"
}

# --- start ------------------------------------------------------------------------------------

# One-time cluster credentials: admin token and ServiceAccount signing key pair.
ensure_credentials() {
  mkdir -p "$CLUSTER_DIR" "$CERT_DIR"
  chmod 700 "$CLUSTER_DIR"
  if [[ ! -s $TOKENS_FILE ]]; then
    # token,user,uid,"group1,group2"
    (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 32)" >"$TOKENS_FILE")
  fi
  if [[ ! -s $SA_KEY || ! -s $SA_PUB ]]; then
    (umask 077 && openssl genrsa -out "$SA_KEY" 2048 2>/dev/null)
    openssl rsa -in "$SA_KEY" -pubout -out "$SA_PUB" 2>/dev/null
  fi
  # kube-apiserver generates a self-signed CA + serving cert into --cert-dir when absent, valid
  # for one year. Drop them when they are about to expire so a fresh pair gets generated.
  if cert_expiring; then
    log "serving certificate expires within $CERT_MARGIN_DAYS days, regenerating"
    rm -f "$CERT_DIR"/apiserver.crt "$CERT_DIR"/apiserver.key
  fi
}

# Days before its end a serving certificate is replaced: wide, because the cluster stays up
# between runs and keeps serving the certificate it started with.
CERT_MARGIN_DAYS=30

# Whether the API server's serving certificate exists and expires within the margin.
cert_expiring() {
  local crt="$CERT_DIR/apiserver.crt"
  [[ -f $crt ]] && ! openssl x509 -checkend $((CERT_MARGIN_DAYS * 86400)) -noout -in "$crt" >/dev/null 2>&1
}

# etcd's database in MB (0 when there is none).
etcd_db_mb() {
  local db="$ETCD_DATA/member/snap/db"
  [[ -f $db ]] || { echo 0; return; }
  echo $(($(stat -c %s "$db") / 1048576))
}

# Removes etcd's data when its database is over ETCD_MAX_DB_MB (see there); etcd is stopped.
reset_large_etcd() {
  local mb
  mb=$(etcd_db_mb)
  if ((mb > ETCD_MAX_DB_MB)); then
    log "etcd's database is $mb MB, over $ETCD_MAX_DB_MB MB: starting it over"
    rm -rf "$ETCD_DATA"
  fi
}

start_etcd() {
  if pid_alive "$ETCD_PID" /usr/bin/etcd; then
    log "etcd already running (pid $(<"$ETCD_PID"))"
  else
    reset_large_etcd
    claim_port etcd "$ETCD_CLIENT_PORT"
    claim_port etcd "$ETCD_PEER_PORT"
    log "starting etcd on $ETCD_URL"
    spawn "$ETCD_PID" "$ETCD_LOG" /usr/bin/etcd \
      --name flowgate \
      --data-dir "$ETCD_DATA" \
      --listen-client-urls "$ETCD_URL" \
      --advertise-client-urls "$ETCD_URL" \
      --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
      --initial-cluster "flowgate=http://$HOST:$ETCD_PEER_PORT" \
      --logger zap
  fi
  wait_for etcd "$ETCD_LOG" "$ETCD_PID" /usr/bin/etcd etcd_healthy
}

start_apiserver() {
  if pid_alive "$APISERVER_PID" "$APISERVER_BIN"; then
    log "kube-apiserver already running (pid $(<"$APISERVER_PID"))"
  else
    claim_port kube-apiserver "$APISERVER_PORT"
    log "starting kube-apiserver on $APISERVER_URL"
    spawn "$APISERVER_PID" "$APISERVER_LOG" "$APISERVER_BIN" \
      --etcd-servers "$ETCD_URL" \
      --bind-address "$HOST" \
      --advertise-address "$HOST" \
      --secure-port "$APISERVER_PORT" \
      --cert-dir "$CERT_DIR" \
      --token-auth-file "$TOKENS_FILE" \
      --authorization-mode RBAC \
      --service-account-key-file "$SA_PUB" \
      --service-account-signing-key-file "$SA_KEY" \
      --service-account-issuer https://kubernetes.default.svc \
      --api-audiences https://kubernetes.default.svc \
      --service-cluster-ip-range 10.0.0.0/24
  fi
  wait_for kube-apiserver "$APISERVER_LOG" "$APISERVER_PID" "$APISERVER_BIN" apiserver_ready
}

# The apiserver writes its serving cert followed by the self-signed CA that issued it into
# apiserver.crt. Extract the CA (the certificate whose subject equals its issuer).
extract_ca() {
  local crt="$CERT_DIR/apiserver.crt" tmp block subject issuer
  tmp=$(mktemp -d)
  # Split the PEM bundle into one file per certificate.
  awk -v dir="$tmp" '/-----BEGIN CERTIFICATE-----/ { n++ } n { print > (dir "/" n ".pem") }' "$crt"
  for block in "$tmp"/*.pem; do
    subject=$(openssl x509 -noout -subject -nameopt RFC2253 -in "$block" | sed 's/^subject=//')
    issuer=$(openssl x509 -noout -issuer -nameopt RFC2253 -in "$block" | sed 's/^issuer=//')
    if [[ $subject == "$issuer" ]]; then
      cp "$block" "$CA_FILE"
      rm -rf "$tmp"
      return 0
    fi
  done
  rm -rf "$tmp"
  die "no self-signed CA certificate found in $crt"
}

write_kubeconfig() {
  extract_ca
  local tmp="$KUBECONFIG_FILE.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: flowgate-local
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 <"$CA_FILE")
users:
- name: flowgate-admin
  user:
    token: $(admin_token)
contexts:
- name: flowgate-local
  context:
    cluster: flowgate-local
    user: flowgate-admin
    namespace: default
current-context: flowgate-local
EOF
  )
  mv -f "$tmp" "$KUBECONFIG_FILE"
}

# Create an object via POST unless it exists (GET 200). $1 = collection URL, $2 = name, $3 = JSON.
# Retried for a while: an apiserver that just saw etcd come back answers /readyz before writes work.
ensure_object() {
  local collection=$1 name=$2 body=$3 code attempt
  for attempt in {1..20}; do
    # curl prints 000 and fails when it cannot connect; keep going and report the code.
    code=$(api_curl -o /dev/null -w '%{http_code}' "$APISERVER_URL$collection/$name" || true)
    [[ $code == 200 ]] && return 0
    code=$(api_curl -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      --data "$body" "$APISERVER_URL$collection" || true)
    if [[ $code == 201 || $code == 409 ]]; then
      log "created $collection/$name"
      return 0
    fi
    [[ $code == 000 || $code == 5* ]] || break
    sleep 1
  done
  die "creating $collection/$name failed (HTTP $code, attempt $attempt)"
}

# Objects a bare apiserver lacks that tests rely on. Uses curl, so start does not need kubectl.
bootstrap_objects() {
  # The apiserver's bootstrap controller normally creates `default`; make sure anyway.
  ensure_object /api/v1/namespaces default \
    '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}}'
  # ServiceAccount issuer discovery (/.well-known/openid-configuration, /openid/v1/jwks): the
  # built-in binding only covers ServiceAccounts; also let anonymous clients (e.g. something
  # verifying ServiceAccount JWTs without credentials) read the public keys, as the upstream docs
  # suggest for OIDC federation.
  ensure_object /apis/rbac.authorization.k8s.io/v1/clusterrolebindings \
    flowgate:service-account-issuer-discovery:unauthenticated \
    '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding",
      "metadata":{"name":"flowgate:service-account-issuer-discovery:unauthenticated"},
      "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole",
                 "name":"system:service-account-issuer-discovery"},
      "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group",
                   "name":"system:unauthenticated"}]}'
}

cluster_up() {
  pid_alive "$ETCD_PID" /usr/bin/etcd && pid_alive "$APISERVER_PID" "$APISERVER_BIN" &&
    etcd_healthy && apiserver_ready
}

cmd_start() {
  # The services stay up between runs, so a database grown too large is only started over if
  # they stop first (the API server too: it would keep a cache ahead of the new store).
  if (($(etcd_db_mb) > ETCD_MAX_DB_MB)); then
    log "etcd's database is over $ETCD_MAX_DB_MB MB: stopping the cluster to start it over"
    cmd_stop
  fi
  # A running API server keeps serving its certificate past its end (clients that verify it
  # would then all fail): restarted in time, it gets a new one (ensure_credentials).
  if cert_expiring && cluster_up; then
    log "the serving certificate expires within $CERT_MARGIN_DAYS days: restarting the cluster for a new one"
    cmd_stop
  fi
  if cluster_up; then
    # Cheap and idempotent: re-assert what tests rely on, in case something deleted it.
    bootstrap_objects
    write_kubeconfig
    # A cluster started before kubectl was built here, on a machine with none.
    kubectl_at_hand || cmd_build
    log "already running: $APISERVER_URL (KUBECONFIG=$KUBECONFIG_FILE)"
    return 0
  fi
  cmd_build
  ensure_packages "${RUNTIME_PACKAGES[@]}"
  ensure_credentials
  local start=$SECONDS
  start_etcd
  start_apiserver
  bootstrap_objects
  write_kubeconfig
  log "ready in $((SECONDS - start))s: $APISERVER_URL (KUBECONFIG=$KUBECONFIG_FILE)"
}

# --- stop / env / status ----------------------------------------------------------------------

cmd_stop() {
  local purge=false
  case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) die "unknown option for stop: $1" ;;
  esac
  # Apiserver first, so it does not log a storm of etcd connection errors.
  terminate kube-apiserver "$APISERVER_PID" "$APISERVER_BIN"
  terminate etcd "$ETCD_PID" /usr/bin/etcd
  if $purge; then
    log "purging $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
  fi
}

# A test's chart release is named after its scratch namespace: `<prefix>-<hex suffix>`, the
# prefix `chart`, `rbac` or either with more words (`chart-files-<hex>`, `rbac-<hex>`).
readonly TEST_RELEASE_RE='^(chart|rbac)(-[a-z0-9-]*)?-[0-9a-f]+$'
readonly PRUNE_AGE='1 hour'

cmd_prune() {
  cluster_up || die "the cluster is not running (scripts/local-cluster.sh start)"
  local cutoff selector collection path code deleted=0
  # RFC 3339 UTC timestamps compare correctly as strings.
  cutoff=$(date -u -d "-$PRUNE_AGE" +%Y-%m-%dT%H:%M:%SZ)
  selector='app.kubernetes.io/name%3Dflowgate,app.kubernetes.io/managed-by%3DHelm'
  local listed
  for collection in /api/v1/services \
    /apis/rbac.authorization.k8s.io/v1/clusterroles \
    /apis/rbac.authorization.k8s.io/v1/clusterrolebindings; do
    # Listed first: a failed list is said, not taken for "nothing to prune".
    if ! listed=$(api_curl -f "$APISERVER_URL$collection?labelSelector=$selector"); then
      log "listing $collection failed; not pruning it this time"
      continue
    fi
    # Objects of a namespaced collection live under /namespaces/NS/ (no selfLink in 1.20).
    while read -r ns name; do
      [[ -n $name ]] || continue
      if [[ $collection == /api/v1/services ]]; then
        path=/api/v1/namespaces/$ns/services/$name
      else
        path=$collection/$name
      fi
      # 404: a prune beside this one (another test run) got there first.
      code=$(api_curl -o /dev/null -w '%{http_code}' -X DELETE "$APISERVER_URL$path" || true)
      [[ $code == 200 || $code == 202 || $code == 404 ]] || die "deleting $path: HTTP $code"
      deleted=$((deleted + 1))
    done < <(jq -r --arg cutoff "$cutoff" --arg re "$TEST_RELEASE_RE" '.items[]
        | select(.metadata.creationTimestamp < $cutoff)
        | select(.metadata.labels["app.kubernetes.io/instance"] // "" | test($re))
        | "\(.metadata.namespace // "-") \(.metadata.name)"' <<<"$listed")
  done
  log "pruned $deleted objects left by test runs before $cutoff"
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
  # For tests that store what the API server would refuse (an object from before a CRD bound).
  printf 'export FLOWGATE_TEST_ETCD_URL=%q\n' "$ETCD_URL"
  # The kubectl built here, after the machine's own if it has one.
  if [[ -x $KUBECTL_BIN ]]; then
    printf 'export PATH="$PATH":%q\n' "$BIN_DIR"
  fi
}

cmd_status() {
  local etcd=down apiserver=down
  if pid_alive "$ETCD_PID" /usr/bin/etcd; then
    etcd="running (pid $(<"$ETCD_PID"), $(etcd_healthy && echo healthy || echo unhealthy))"
  fi
  if pid_alive "$APISERVER_PID" "$APISERVER_BIN"; then
    apiserver="running (pid $(<"$APISERVER_PID"), $(apiserver_ready && echo ready || echo not ready))"
  fi
  echo "etcd:           $etcd  $ETCD_URL"
  echo "kube-apiserver: $apiserver  $APISERVER_URL"
  if cluster_up; then
    echo "cluster: up (KUBECONFIG=$KUBECONFIG_FILE)"
  else
    echo "cluster: down"
    return 1
  fi
}

usage() {
  # Print the usage part of the header comment.
  sed -n '2,/^#   status/s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# Hold an exclusive lock for the rest of this process, so that concurrent invocations (e.g.
# parallel test binaries all calling `start`) neither build twice nor spawn duplicate daemons.
take_lock() {
  mkdir -p "$CACHE"
  exec 9>"$LOCK_FILE"
  if ! flock -n 9; then
    log "waiting for another local-cluster.sh to finish"
    flock 9
  fi
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  # Under `set -e` a failing command ends the script; say which one, so a CI log shows it.
  [[ $cmd == @(build|start|stop) ]] &&
    trap 'rc=$?; ((rc == 0)) || log "exit status $rc; last command: $BASH_COMMAND"' EXIT
  case "$cmd" in
    build) take_lock; cmd_build ;;
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop "$@" ;;
    prune) cmd_prune ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *) usage ;;
  esac
}

# `exit` on the same line: bash has read the whole line before running it, so editing this file
# while it runs (e.g. during a long build) cannot make bash execute half-read text.
main "$@"; exit
