#!/usr/bin/env bash
# Runs flowgate for real on this machine: a local kube-apiserver + etcd, a real Flowise, and
# flowgate (controller + proxy) with the embedded SQLite ledger, loaded with examples/.
#
#   scripts/dev.sh          # start everything, print how to call it, run flowgate in the foreground
#
# Ctrl-C stops flowgate; the API server and Flowise keep running for the next time
# (scripts/local-cluster.sh stop, scripts/flowise.sh stop).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export FLOWGATE_CACHE=${FLOWGATE_CACHE:-$HOME/.cache/flowgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLOWGATE_CACHE/target}
dev="$FLOWGATE_CACHE/dev"
mkdir -p "$dev"

say() { printf '[dev] %s\n' "$*" >&2; }
# shellcheck source=lib/checkout.sh
. "$root/scripts/lib/checkout.sh"

scripts/local-cluster.sh start >&2
use_env scripts/local-cluster.sh
scripts/flowise.sh start >&2
use_env scripts/flowise.sh

say "building flowgate"
same_checkout "$root"
cargo build --quiet --bin flowgate
bin="$CARGO_TARGET_DIR/debug/flowgate"

say "installing CRDs and the team-a examples"
# Forced: the tests apply the same fields under a manager of their own.
"$bin" crd | kubectl apply --server-side --force-conflicts --field-manager flowgate-dev -f - >/dev/null
# Objects of a kind whose CRD is not served yet are refused ("no matches for kind").
kubectl wait --for condition=established --timeout=60s \
  crd/chatflows.flowgate.io crd/chatflowaccesses.flowgate.io crd/creditpolicies.flowgate.io >/dev/null
kubectl get namespace team-a >/dev/null 2>&1 || kubectl create namespace team-a >/dev/null
kubectl get namespace apps >/dev/null 2>&1 || kubectl create namespace apps >/dev/null

# examples/chatflow-support-bot.yaml adopts a Flowise chatflow named "Support Bot": make sure one
# exists (the offline echo flow), so the adoption succeeds.
key=$(cat "$FLOWGATE_FLOWISE_API_KEY_FILE")
# Read whole first: `grep -q` stopping early would fail curl's write, and pipefail the test.
listing=$(curl -fsS -H "Authorization: Bearer $key" "$FLOWGATE_FLOWISE_URL/api/v1/chatflows")
if ! grep -q '"name":"Support Bot"' <<<"$listing"; then
  python3 - "$root/tests/fixtures/flowise-echo-agentflow.json" > "$dev/support-bot.json" <<'PY'
import json, sys
flow = json.load(open(sys.argv[1]))
flow["name"] = "Support Bot"
if not isinstance(flow["flowData"], str):
    flow["flowData"] = json.dumps(flow["flowData"])
print(json.dumps(flow))
PY
  curl -fsS -X POST -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    --data @"$dev/support-bot.json" "$FLOWGATE_FLOWISE_URL/api/v1/chatflows" >/dev/null
  say "created the Flowise chatflow 'Support Bot'"
fi
kubectl apply --server-side --field-manager flowgate-dev -f examples/ >/dev/null

[ -s "$dev/hs256" ] || head -c 48 /dev/urandom | base64 > "$dev/hs256"

# A one-day HS256 token for alice@example.com (granted by examples/access-support-team.yaml).
token=$(python3 - "$dev/hs256" <<'PY'
import base64, hashlib, hmac, json, sys, time
secret = open(sys.argv[1], "rb").read().strip()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "alice", "email": "alice@example.com", "groups": ["support"],
                       "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)
echo "$token" > "$dev/alice.token"

# Ports of your choice: FLOWGATE_LISTEN_ADDR=127.0.0.1:18080 FLOWGATE_OPS_ADDR=127.0.0.1:19090.
listen=${FLOWGATE_LISTEN_ADDR:-127.0.0.1:8080}
ops=${FLOWGATE_OPS_ADDR:-127.0.0.1:9090}

cat >&2 <<MSG

[dev] flowgate is starting on http://$listen (ops: http://$ops/readyz, /metrics).
[dev] A token for alice@example.com is in $dev/alice.token. Try, in another terminal:

  eval "\$($root/scripts/local-cluster.sh env)"   # kubectl for the local cluster
  TOKEN=\$(cat $dev/alice.token)
  curl -s --retry 30 --retry-connrefused --retry-all-errors -o /dev/null http://$ops/readyz
  kubectl wait --for condition=Ready chatflow/faq-bot -n team-a --timeout=120s
  kubectl get chatflows,chatflowaccesses,creditpolicies -n team-a
  curl -s -H "Authorization: Bearer \$TOKEN" http://$listen/api/v1/chatflows
  ID=\$(kubectl get chatflow faq-bot -n team-a -o jsonpath='{.status.flowiseId}')
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"question":"hello"}' http://$listen/api/v1/prediction/\$ID
  curl -s -H "Authorization: Bearer \$TOKEN" http://$listen/credits

MSG

export FLOWGATE_LISTEN_ADDR=$listen
export FLOWGATE_OPS_ADDR=$ops
export FLOWGATE_LEDGER_URL="sqlite://$dev/ledger.db"
export FLOWGATE_JWT_HS256_SECRET_FILE="$dev/hs256"
export FLOWGATE_SYNC_INTERVAL=${FLOWGATE_SYNC_INTERVAL:-30s}
# scripts/test.sh refuses to run beside this flowgate, whose controller would reconcile the
# tests' Chatflows too (`exec` keeps this shell's pid).
echo $$ > "$dev/flowgate.pid"
exec "$bin" run
