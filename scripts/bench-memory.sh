#!/usr/bin/env bash
# Resident memory per inode (docs/benchmarks.md, "Memory per inode"):
# starts three `nokv serve` processes on loopback (release build), creates
# 10^5 and then 9 x 10^5 more empty files (`nokv bench create`, 64 at a
# time) and prints each process's VmRSS after each step and the slope in
# bytes per inode. Usage: bash scripts/bench-memory.sh [FIRST] [MORE]
# BODY=SIZE (e.g. BODY=4KiB) publishes every file with a one-block body of
# SIZE instead (`nokv bench publish --bulk 256`, 4 calls at a time), the
# nodes storing bodies in a local directory (`--blob-store file://...`).
set -euo pipefail
cd "$(dirname "$0")/.."
FIRST="${1:-100000}"
MORE="${2:-900000}"
BODY="${BODY:-}"
if [ -n "$BODY" ]; then
  BLOBS="$(mktemp -d)"
  SERVE_ARGS=(--blob-store "file://$BLOBS")
fi
# shellcheck source=lib/three-nodes.sh
source scripts/lib/three-nodes.sh
if [ -n "$BODY" ]; then
  trap 'cleanup; rm -rf "$BLOBS"' EXIT
fi

# Adds N files to the namespace, empty or with a body of $BODY.
add() {
  if [ -n "$BODY" ]; then
    "$NOKV" bench publish --bulk 256 --size "$BODY" --concurrency 4 --count "$1" | head -1
  else
    "$NOKV" bench create --concurrency 64 --count "$1" | head -1
  fi
}

# VmRSS of every node process in KiB, space separated.
rss() {
  for pid in "${PIDS[@]}"; do awk '/^VmRSS:/{printf "%d ", $2}' "/proc/$pid/status"; done
}
mib() { for k in $1; do printf "%d " $((k / 1024)); done; }
sum() { local t=0; for k in $1; do t=$((t + k)); done; echo "$t"; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "resident MiB per process, empty: $(mib "$(rss)")"
add "$FIRST"
AT_FIRST="$(rss)"
echo "resident MiB per process at $FIRST inodes: $(mib "$AT_FIRST")"
add "$MORE"
AT_ALL="$(rss)"
echo "resident MiB per process at $((FIRST + MORE)) inodes: $(mib "$AT_ALL")"
GROWTH_KIB=$(( ($(sum "$AT_ALL") - $(sum "$AT_FIRST")) / ${#PIDS[@]} ))
echo "per inode per replica: $((GROWTH_KIB * 1024 / MORE)) bytes (mean slope of the three)"
du -sh "$DATA"/n1/snapshot "$DATA"/n1/raft-log | sed 's/^/node 1 on disk: /'
