#!/usr/bin/env bash
# The device list at scale: DEVICES DTUs online (dtu-sim, release build), then wrk against
# GET /api/devices as the console asks it (a page of 500, a filter) and whole, next to the
# yardstick of the same run: GET /api/health on the same server (the HTTP stack and nothing
# else). Prints wrk's latency figures per URL. Needs wrk (apt-get install wrk).
#
#   bash benches/api_list.sh            # DEVICES=10000 SECONDS=20 CONNECTIONS=8
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-10000}
SECONDS_EACH=${SECONDS:-20}
CONNECTIONS=${CONNECTIONS:-8}
TOKEN=bench-admin-token

if ! command -v wrk >/dev/null 2>&1; then
  echo "== installing wrk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet --bin dtu-supervisor --bin dtu-sim

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WEB=$(free_port)
DEV=$(free_port)
work=$(mktemp -d)
cp settings/data.toml "$work/"
cat >"$work/server.toml" <<EOF
[web]
bind = "127.0.0.1:$WEB"
[[listeners]]
name = "framed"
bind = "127.0.0.1:$DEV"
protocol = "framed"
profile = "default"
[liveness]
heartbeat_interval = "60s"
max_missed = 5
register_timeout = "10s"
[database]
url = "sqlite://$work/dtu.db"
[storage]
spool_path = "$work/spool.jsonl"
store_heartbeats = false
[auth]
admin_token = "$TOKEN"
EOF

ulimit -n "$(ulimit -Hn)"
RUST_LOG=warn target/release/dtu-supervisor --settings "$work" >"$work/server.log" 2>&1 &
server=$!
sim=""
cleanup() {
  [ -n "$sim" ] && kill "$sim" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

H="Authorization: Bearer $TOKEN"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$WEB/api/health" >/dev/null && break; sleep 0.2; done
target/release/dtu-sim --server "127.0.0.1:$DEV" --count "$DEVICES" --first-id 100000 \
  --heartbeat 30s --spread-sources >"$work/sim.log" 2>&1 &
sim=$!
for _ in $(seq 300); do
  online=$(curl -sf -H "$H" -o /dev/null -D - "http://127.0.0.1:$WEB/api/devices?limit=1&online=true" \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="x-total-count"{print $2}')
  [ "${online:-0}" -ge "$DEVICES" ] && break
  sleep 1
done
echo "== $online of $DEVICES devices online; wrk -t2 -c$CONNECTIONS -d${SECONDS_EACH}s per URL"
echo "== machine: $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%d)"

run() {
  local label=$1 path=$2
  local bytes
  bytes=$(curl -sf -H "$H" "http://127.0.0.1:$WEB$path" | wc -c)
  echo "-- $label: GET $path ($bytes bytes)"
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" --latency -H "$H" "http://127.0.0.1:$WEB$path" \
    | grep -E "Requests/sec|^ +(50|90|99)%|Non-2xx|Socket errors"
}
run "yardstick: health" "/api/health"
if [ -n "${ONLY:-}" ]; then run "only" "$ONLY"; exit 0; fi
run "console page" "/api/devices?limit=500"
run "console page, filtered" "/api/devices?limit=500&q=1234"
run "page of 100, online" "/api/devices?limit=100&online=true"
run "whole list" "/api/devices"
