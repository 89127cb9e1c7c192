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
# shellcheck source=lib/three-nodes.sh
source scripts/lib/three-nodes.sh
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
