#!/usr/bin/env bash
# Agent token-cost benchmark (docs/agent-benchmark.md), end to end:
# builds nokv (release), starts a three-replica `nokv dev` cluster with a
# local-directory blob store and a `nokv gateway` on free loopback ports,
# generates the 875-run corpus, publishes it, runs the scripted T1-T5 suite
# against the gateway and the SQLite arm, prints the table, stops everything.
#
# Usage: bash gateway/bench/run.sh
# Environment:
#   NOKV=path        use this nokv binary instead of building one
#   OUT_DIR=dir      where results.json, publish.json, manifest.json go
#                    (default target/agent-bench)
#   SEED=n RUNS=n    corpus seed and size (default 20260610, 875)
#   JOBS=n           nokv processes at once while publishing (default 4)
#   KEEP=1           keep the temporary directory (cluster data, corpus)
# Not part of the test suite: it is a benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
BENCH="$REPO/gateway/bench"
OUT_DIR="${OUT_DIR:-$REPO/target/agent-bench}"
SEED="${SEED:-20260610}"
RUNS="${RUNS:-875}"
JOBS="${JOBS:-4}"

if [ -z "${NOKV:-}" ]; then
  echo "== building nokv (release)"
  cargo build --release -p nokv-cli --bin nokv
  NOKV="$REPO/target/release/nokv"
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# Four free loopback ports: three consecutive for the replicas, one for the gateway.
read -r BASE GW_PORT < <(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
rng = random.Random()
while True:
    base = rng.randrange(20000, 40000)
    if all(free(base + i) for i in range(3)) and free(base + 10):
        print(base, base + 10)
        break
EOF
)
EP="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"

# Polls COMMAND until it succeeds, for at most SECONDS.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    for pid in "${PIDS[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "process $pid exited while waiting for $what" >&2
        return 1
      fi
    done
    sleep 0.2
  done
}
cluster_healthy() { "$NOKV" status --endpoints "$EP" --json | grep -q '"healthy":true'; }
gateway_healthy() {
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$GW_PORT/healthz', timeout=2).status == 200 else 1)"
}

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, Linux $(uname -r), $(python3 --version)"
echo "== nokv dev on $EP (data in $TMP/dev)"
"$NOKV" dev --data-dir "$TMP/dev" --base-port "$BASE" >"$TMP/dev.log" 2>&1 &
PIDS+=("$!")
wait_for 60 "the cluster (nokv status)" cluster_healthy

echo "== nokv gateway on 127.0.0.1:$GW_PORT"
"$NOKV" gateway --endpoints "$EP" --listen "127.0.0.1:$GW_PORT" >"$TMP/gateway.log" 2>&1 &
PIDS+=("$!")
wait_for 30 "the gateway (/healthz)" gateway_healthy

echo "== generating the corpus (seed $SEED, $RUNS runs)"
python3 "$BENCH/corpus.py" --out "$TMP/corpus" --seed "$SEED" --runs "$RUNS" >/dev/null
python3 -c "import json; m = json.load(open('$TMP/corpus/manifest.json')); print(f\"{m['runs']} runs ({m['train_runs']} train, {m['eval_runs']} eval; {m['status']}), {m['files']} files, {m['bytes']/1e6:.1f} MB; SQLite {m['sqlite_bytes']/1e6:.1f} MB, {m['metric_rows_sql']} metric rows\")"

echo "== publishing to /bench/runs ($JOBS at once)"
python3 "$BENCH/publish.py" --nokv "$NOKV" --endpoints "$EP" --corpus "$TMP/corpus" --dest /bench/runs --jobs "$JOBS"

echo "== agent suite"
mkdir -p "$OUT_DIR"
rc=0
python3 "$BENCH/agent_suite.py" --gateway "http://127.0.0.1:$GW_PORT" --sqlite "$TMP/corpus/corpus.sqlite" \
  --oracle "$TMP/corpus/oracle.json" --root /bench/runs --out "$OUT_DIR/results.json" || rc=$?
cp "$TMP/corpus/manifest.json" "$TMP/corpus/publish.json" "$TMP/corpus/oracle.json" "$OUT_DIR/"
echo "results: $OUT_DIR/results.json"
exit "$rc"
