#!/usr/bin/env bash
# NoKV and etcd side by side, one command, one machine (issue 15, point 6).
#
# For each load (durable create with 1 and 64 clients, linearizable
# stat/get with 16 and 64 clients) and each system, starts a fresh
# three-member cluster on loopback, runs the load, stops the cluster; the
# whole table twice, alternating the systems. NoKV: three `nokv serve`
# processes (release build, default settings). etcd: three members of the
# `etcd` on PATH (`bash router/install-etcd.sh`), default settings, driven
# by `nokv bench etcd-create|etcd-get` (JuiceFS-style create transaction,
# see cli/src/bench_etcd.rs). Prints every run as JSON, then a Markdown
# table with the ratio NoKV / etcd of each round.
#
# Usage: bash scripts/bench-vs-etcd.sh [COUNT]   (default 20000; serial
# creates run COUNT/10)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${1:-20000}"
command -v etcd >/dev/null || { echo "no etcd on PATH: bash router/install-etcd.sh" >&2; exit 1; }
cargo build --release -p nokv-cli --bin nokv >/dev/null
NOKV="$PWD/target/release/nokv"
WORK="$(mktemp -d)"
RESULTS="$WORK/results.jsonl"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

# Polls `$@` every 0.1 s until it succeeds; fails after 30 s.
wait_for() {
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for: $*" >&2
  return 1
}

start_etcd() {
  local dir="$1" cluster="" i token="bench-$RANDOM"
  for i in 1 2 3; do cluster="${cluster:+$cluster,}e$i=http://127.0.0.1:$((23800 + i))"; done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:$((23790 + i))" \
      --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "$token" >"$dir/e$i.log" 2>&1 &
    PIDS+=("$!")
  done
  for i in 1 2 3; do
    wait_for curl -fsS --max-time 1 "http://127.0.0.1:$((23790 + i))/health"
  done
  ETCD_ENDPOINTS="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"
}

start_nokv() {
  local dir="$1" members="" id port
  for id in 1 2 3; do
    port=$((17500 + id))
    "$NOKV" serve --node-id "$id" --addr "127.0.0.1:$port" --data-dir "$dir/n$id" \
      >"$dir/n$id.log" 2>&1 &
    PIDS+=("$!")
    members="${members:+$members,}$id=127.0.0.1:$port"
  done
  export NOKV_ENDPOINTS="127.0.0.1:17501,127.0.0.1:17502,127.0.0.1:17503"
  "$NOKV" cluster init --members "$members" --wait 30s >/dev/null
}

# cell ROUND SYSTEM LOAD: a fresh cluster, one load, one JSON line.
cell() {
  local round="$1" system="$2" load="$3" dir
  dir="$WORK/$round-$system-$load"
  mkdir -p "$dir"
  local workload concurrency count
  case "$load" in
    create-1) workload=create; concurrency=1; count=$((COUNT / 10)) ;;
    create-64) workload=create; concurrency=64; count="$COUNT" ;;
    stat-16) workload=stat; concurrency=16; count="$COUNT" ;;
    stat-64) workload=stat; concurrency=64; count="$COUNT" ;;
  esac
  local line
  if [[ "$system" == etcd ]]; then
    start_etcd "$dir"
    [[ "$workload" == create ]] && workload=etcd-create || workload=etcd-get
    line="$("$NOKV" --json bench "$workload" --concurrency "$concurrency" --count "$count" \
      --etcd-endpoints "$ETCD_ENDPOINTS")"
  else
    start_nokv "$dir"
    line="$("$NOKV" --json bench "$workload" --concurrency "$concurrency" --count "$count")"
  fi
  stop_all
  echo "{\"round\":$round,\"system\":\"$system\",\"load\":\"$load\",\"run\":$line}" | tee -a "$RESULTS"
}

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "== $("$NOKV" --version), $(etcd --version | head -n 1)"
for round in 1 2; do
  for load in create-1 create-64 stat-16 stat-64; do
    if [[ "$round" == 1 ]]; then order="etcd nokv"; else order="nokv etcd"; fi
    for system in $order; do cell "$round" "$system" "$load"; done
  done
done

python3 - "$RESULTS" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
cell = {(r["round"], r["system"], r["load"]): r["run"] for r in runs}
names = {
    "create-1": "durable create, 1 client",
    "create-64": "durable create, 64 clients",
    "stat-16": "linearizable stat/get, 16 clients",
    "stat-64": "linearizable stat/get, 64 clients",
}
print()
print("| load | etcd ops/s (p50 ms) | NoKV ops/s (p50 ms) | NoKV / etcd |")
print("|---|---|---|---|")
for load, name in names.items():
    e = [cell[(r, "etcd", load)] for r in (1, 2)]
    n = [cell[(r, "nokv", load)] for r in (1, 2)]
    fmt = lambda xs: " / ".join(f"{x['ops_per_sec']:,.0f} ({x['p50_ms']:.2f})" for x in xs)
    ratio = " / ".join(f"{b['ops_per_sec'] / a['ops_per_sec']:.2f}x" for a, b in zip(e, n))
    errors = sum(x["errors"] for x in e + n)
    note = f" ({errors} errors)" if errors else ""
    print(f"| {name} | {fmt(e)} | {fmt(n)} | {ratio}{note} |")
EOF
