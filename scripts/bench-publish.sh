#!/usr/bin/env bash
# Publish benchmark of docs/benchmarks.md: a real S3 server (s3s-fs) and a
# three-replica cluster of separate `nokv serve` processes on loopback
# (release build); raw PUTs and NoKV publishes of the same bytes side by
# side, then small-file publishes with 32 clients.
# Usage: bash scripts/bench-publish.sh
# S3_DATA=DIR keeps the S3 server's objects in DIR (default: beside the
# replicas' data, on the same disk); S3_DATA=/dev/shm/... models an object
# store on its own storage, as in any real deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash blob/install-s3s-fs.sh >/dev/null
cargo build --release -p nokv-cli --bin nokv >/dev/null
NOKV="$PWD/target/release/nokv"
S3S="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
DATA="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
  if [ -n "${S3_DATA:-}" ]; then rm -rf "$S3_DATA"; fi
}
trap cleanup EXIT

S3_PORT=19000
S3_DIR="${S3_DATA:-$DATA/s3}"
mkdir -p "$S3_DIR/bench"   # s3s-fs maps buckets to directories
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key AK --secret-key SK "$S3_DIR" \
  >"$DATA/s3.log" 2>&1 &
PIDS+=("$!")
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=AK \
  AWS_SECRET_ACCESS_KEY=SK AWS_REGION=us-east-1

BASE=17500
MEMBERS=""
for id in 1 2 3; do
  port=$((BASE + id))
  "$NOKV" serve --node-id "$id" --addr "127.0.0.1:$port" --data-dir "$DATA/n$id" \
    --blob-store s3://bench/nokv >"$DATA/n$id.log" 2>&1 &
  PIDS+=("$!")
  MEMBERS="${MEMBERS:+$MEMBERS,}$id=127.0.0.1:$port"
done
export NOKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"
"$NOKV" cluster init --members "$MEMBERS" --wait 30s

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); S3 data in $S3_DIR ($(df --output=source "$S3_DIR" | tail -1))"
"$NOKV" bench publish --size 1MiB --concurrency 4 --count 200
"$NOKV" bench publish --size 64MiB --concurrency 1 --count 20
"$NOKV" bench publish --size 4KiB --concurrency 32 --count 2000 --no-raw
