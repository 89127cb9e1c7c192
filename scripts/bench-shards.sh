#!/usr/bin/env bash
# Creates/s over 1, 4 and 16 shards on the same three nodes (docs/benchmarks.md,
# "Creates across shards"): a real etcd control plane and three separate
# `nokv serve --etcd` processes on loopback (release build). Shards are made
# with `nokv shard create` (new shards take turns at leading, and the node
# leading shard 0 spreads leaders); each run spreads 64 clients' creates
# round-robin over one directory per shard.
# Usage: bash scripts/bench-shards.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-20000}"
bash router/install-etcd.sh >/dev/null
cargo build --release -p nokv-cli --bin nokv >/dev/null
NOKV="$PWD/target/release/nokv"
DATA="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

ETCD_PORT=17690
etcd --name b1 --data-dir "$DATA/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "b1=http://127.0.0.1:$((ETCD_PORT + 1))" >"$DATA/etcd.log" 2>&1 &
PIDS+=("$!")
export NOKV_ETCD="http://127.0.0.1:$ETCD_PORT" NOKV_CLUSTER=bench

BASE=17600
MEMBERS=""
for id in 1 2 3; do
  port=$((BASE + id))
  "$NOKV" serve --node-id "$id" --addr "127.0.0.1:$port" --data-dir "$DATA/n$id" \
    >"$DATA/n$id.log" 2>&1 &
  PIDS+=("$!")
  MEMBERS="${MEMBERS:+$MEMBERS,}$id=127.0.0.1:$port"
done
# etcd may still be starting: try for up to 30 s (`cluster init` itself
# waits for the first member and then for a leader).
for attempt in $(seq 1 60); do
  if "$NOKV" cluster init --members "$MEMBERS" --wait 30s >/dev/null 2>"$DATA/init.err"; then
    break
  fi
  [ "$attempt" -lt 60 ] || { cat "$DATA/init.err" >&2; exit 1; }
  sleep 0.5
done
unset NOKV_ETCD
export NOKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "== 1 shard (the root)"
"$NOKV" mkdir /one
"$NOKV" bench create --concurrency 64 --count "$COUNT" --dir /one
for n in 4 16; do
  dirs=""
  for k in $(seq 1 "$n"); do
    "$NOKV" shard create "/s$n-$k" >/dev/null
    dirs="${dirs:+$dirs,}/s$n-$k"
  done
  "$NOKV" shard rebalance >/dev/null
  echo "== $n shards"
  "$NOKV" node ls
  "$NOKV" bench create --concurrency 64 --count "$COUNT" --dir "$dirs"
done
