#!/usr/bin/env bash
# Starts a three-replica cluster of separate `nokv serve` processes on
# loopback (release build), runs the benchmarks of docs/benchmarks.md
# against it, and stops it. Usage: bash scripts/bench-cluster.sh [COUNT]
# With BREAKDOWN=1 the create and stat runs also print where their time
# went, stage by stage (`nokv bench --breakdown`). NOKV_COALESCE=0 turns
# the client's request coalescing off (every request in a call of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-20000}"
BD="${BREAKDOWN:+--breakdown}"
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

BASE=17400
MEMBERS=""
for id in 1 2 3; do
  port=$((BASE + id))
  "$NOKV" serve --node-id "$id" --addr "127.0.0.1:$port" --data-dir "$DATA/n$id" \
    >"$DATA/n$id.log" 2>&1 &
  PIDS+=("$!")
  MEMBERS="${MEMBERS:+$MEMBERS,}$id=127.0.0.1:$port"
done
export NOKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"
# `cluster init` retries until the first member answers, then waits for a leader.
"$NOKV" cluster init --members "$MEMBERS" --wait 30s
"$NOKV" status

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
"$NOKV" bench create --concurrency 1 --count "$((COUNT / 10))" $BD
"$NOKV" bench create --concurrency 64 --count "$COUNT" $BD
"$NOKV" bench stat --concurrency 16 --count "$COUNT" $BD
"$NOKV" bench stat --concurrency 64 --count "$((COUNT * 2))" $BD
# The bulk path: Client::create_many, 256 files per call, 4 calls at once.
"$NOKV" bench create --concurrency 4 --count "$((COUNT * 5))" --bulk 256 $BD
"$NOKV" --stale bench stat --concurrency 16 --count "$COUNT"
# Watch delivery (leader stamp -> event at a recursive watcher), then
# durable creates again with 10 live snapshot pins of the whole namespace.
"$NOKV" bench watch --concurrency 1 --count "$((COUNT / 10))"
"$NOKV" bench watch --concurrency 16 --count "$COUNT"
for _ in 1 2 3 4 5 6 7 8 9 10; do "$NOKV" snapshot create / --lease 1h >/dev/null; done
"$NOKV" snapshot ls | wc -l | sed 's/^/live pins: /'
"$NOKV" bench create --concurrency 64 --count "$COUNT"
