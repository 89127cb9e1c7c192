# Sourced by the bench scripts: builds the release binary and starts a
# three-replica cluster of separate `nokv serve` processes on loopback
# (ports 17401-17403), each with its own data directory under a temporary
# directory, and initializes it. Sets NOKV (the binary), DATA, PIDS (the
# node processes, in id order) and exports NOKV_ENDPOINTS; everything is
# stopped and removed when the script exits. Extra `serve` arguments can
# be given in SERVE_ARGS (an array). NOKV_BIN=PATH runs that binary
# instead of building one (to compare two builds back to back).
if [ -n "${NOKV_BIN:-}" ]; then
  NOKV="$NOKV_BIN"
else
  cargo build --release -p nokv-cli --bin nokv >/dev/null
  NOKV="$PWD/target/release/nokv"
fi
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
    ${SERVE_ARGS[@]+"${SERVE_ARGS[@]}"} >"$DATA/n$id.log" 2>&1 &
  PIDS+=("$!")
  MEMBERS="${MEMBERS:+$MEMBERS,}$id=127.0.0.1:$port"
done
export NOKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"
# `cluster init` retries until the first member answers, then waits for a leader.
"$NOKV" cluster init --members "$MEMBERS" --wait 30s
