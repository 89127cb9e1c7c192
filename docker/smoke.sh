#!/usr/bin/env bash
# End-to-end check of the Docker packaging: builds the images (docker/build.sh),
# starts docker-compose.yml (s3 + n1, n2, n3 + init), waits for a leader, runs
# namespace operations and a put/cat round trip with the `nokv` client inside
# the compose network, restarts the whole stack, checks that everything
# survived, and always tears it down (`down -v`), also on failure.
#
# Usage:  bash docker/smoke.sh
#
# Environment:
#   NOKV_SMOKE_SKIP_BUILD=1   use the existing images (skip docker/build.sh)
#   NOKV_SMOKE_PROJECT        compose project name (default nokv-smoke)
#   NOKV_SMOKE_TIMEOUT        seconds to wait for a leader, each time (default 90)
#   NOKV_N1_PORT.., NOKV_S3_PORT, NOKV_IMAGE, NOKV_S3_IMAGE: as in docker-compose.yml
#
# All traffic stays on this machine: the compose network and 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
project="${NOKV_SMOKE_PROJECT:-nokv-smoke}"
leader_timeout="${NOKV_SMOKE_TIMEOUT:-90}"
t0=$SECONDS

say() { printf '[smoke %3ds] %s\n' "$((SECONDS - t0))" "$*"; }
fail() { printf '[smoke %3ds] FAIL: %s\n' "$((SECONDS - t0))" "$*" >&2; exit 1; }

# docker compose (v2 plugin) or docker-compose (v1), whichever is installed.
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
dc() { "${compose[@]}" -p "$project" -f "$root/docker-compose.yml" "$@"; }

work="$(mktemp -d)"
export NOKV_CLI_DIR="$work"   # mounted at /work in the cli service

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 ]]; then
    say "failed (exit $rc); state and recent logs:"
    dc ps || true
    dc logs --no-color --tail 40 || true
  fi
  say "tearing down (${compose[*]} down -v)"
  dc --profile worker down -v --remove-orphans >/dev/null 2>&1 || say "warning: down -v failed"
  rm -rf "$work"
  if [[ $rc -eq 0 ]]; then
    say "PASS in $((SECONDS - t0))s"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The client inside the network: a fresh container of the `cli` service.
# Compose's own chatter ("Creating ..._cli_run ...", "[+] ...") is dropped from stderr.
cli() {
  local rc=0
  dc run --rm -T cli "$@" 2>"$work/cli.err" || rc=$?
  grep -v '_cli_run \.\.\.\|^\[+\]\|^ *[✔⠿]\|^$' "$work/cli.err" >&2 || true
  return "$rc"
}

# Polls `nokv status --json` inside the network (exec in n1: the image has no
# shell, but exec runs the binary) until all three replicas answer and one is
# leader, or the deadline passes.
wait_for_leader() {
  local deadline=$((SECONDS + leader_timeout)) out="" nodes_part roles leaders
  while :; do
    if out="$(dc exec -T n1 nokv --endpoints n1:7400,n2:7400,n3:7400 --timeout 2s status --json 2>/dev/null)"; then
      # Count roles of the node rows only: keys are sorted, and the
      # per-shard rows ("shards", after "nodes") carry roles too.
      nodes_part="${out%%\"shards\":*}"
      roles="$(grep -o '"role":"[a-z]*"' <<<"$nodes_part" | wc -l)"
      leaders="$(grep -o '"role":"leader"' <<<"$nodes_part" | wc -l)"
      if [[ "$roles" -eq 3 && "$leaders" -eq 1 ]]; then
        say "leader elected: $(grep -o '"leader_addr":"[^"]*"' <<<"$out" | head -n 1)"
        return 0
      fi
    fi
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$out" >&2
      fail "no leader with 3 replicas answering within ${leader_timeout}s"
    fi
    sleep 0.5 # poll interval; the loop re-checks until the deadline
  done
}

# Waits (with a deadline) for the init one-shot to exit and checks it exited 0.
check_oneshot() { # SERVICE: waits until the one-shot exited, requires exit 0
  local service="$1" id deadline=$((SECONDS + leader_timeout)) state
  id="$(dc ps -a -q "$service")" # -a: it has exited
  [[ -n "$id" ]] || fail "no $service container"
  while :; do
    state="$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id")"
    [[ "$state" == exited* ]] && break
    ((SECONDS < deadline)) || fail "$service did not finish within ${leader_timeout}s ($state)"
    sleep 0.5 # poll interval; the loop re-checks until the deadline
  done
  [[ "$state" == "exited 0 "* ]] || { docker logs "$id" >&2; fail "$service failed: $state"; }
  say "$service exited 0: $(docker logs "$id" 2>&1 | tail -n 1)"
}
check_init() {
  check_oneshot init
  check_oneshot shards
}

expect_eq() { # WHAT EXPECTED ACTUAL
  [[ "$2" == "$3" ]] || fail "$1: expected [$2], got [$3]"
}

# ---------------------------------------------------------------- build + up
if [[ "${NOKV_SMOKE_SKIP_BUILD:-0}" == "1" ]]; then
  say "skipping image build (NOKV_SMOKE_SKIP_BUILD=1)"
else
  say "building images (bash docker/build.sh)"
  bash "$root/docker/build.sh"
fi
say "compose: ${compose[*]} -p $project"
for port in "${NOKV_N1_PORT:-7401}" "${NOKV_N2_PORT:-7402}" "${NOKV_N3_PORT:-7403}" "${NOKV_S3_PORT:-9000}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "127.0.0.1:$port is in use (nokv dev? another stack?); set NOKV_N1_PORT/NOKV_N2_PORT/NOKV_N3_PORT/NOKV_S3_PORT"
  fi
done
dc --profile worker down -v --remove-orphans >/dev/null 2>&1 || true # leftovers of an interrupted run
t_up=$SECONDS
dc up -d
wait_for_leader
check_init
say "cluster ready $((SECONDS - t_up))s after 'up -d'"

# ------------------------------------------------------- operations, inside
say "namespace operations (compose run --rm cli ...)"
cli mkdir -p /smoke/run-1/ckpt
cli touch /smoke/run-1/config.json
cli xattr set /smoke/run-1/config.json user.owner smoke
cli mv /smoke/run-1/config.json /smoke/run-1/params.json
cli ln -s /smoke/run-1 /smoke/latest
expect_eq "ls /smoke/run-1" "ckpt/ params.json" "$(cli ls /smoke/run-1 | tr '\n' ' ' | sed 's/ $//')"
expect_eq "readlink /smoke/latest" "/smoke/run-1" "$(cli readlink /smoke/latest)"

say "two shards: / and /shared (grafted), one tree"
cli shard ls | grep -q '^ *1 /shared ' || { cli shard ls >&2; fail "shard 1 is not grafted at /shared"; }
cli mkdir -p /shared/run-2
printf 'in the second shard\n' | cli put - /shared/run-2/notes.txt
expect_eq "cat /shared/run-2/notes.txt" "in the second shard" "$(cli cat /shared/run-2/notes.txt)"
cli stat --json /shared | grep -q '"inode_display":"1:1"' || { cli stat --json /shared >&2; fail "/shared is not shard 1's root"; }
cli rmdir /shared 2>"$work/rmdir.err" && fail "rmdir of a graft point succeeded"
grep -q busy "$work/rmdir.err" || fail "rmdir /shared: expected EBUSY, got: $(cat "$work/rmdir.err")"
cli mv /shared/run-2/notes.txt /notes.txt 2>"$work/mv.err" && fail "a rename across shards succeeded"
grep -q "across shards" "$work/mv.err" || fail "mv across shards: expected EXDEV, got: $(cat "$work/mv.err")"

say "put/cat round trip (3 MiB of random bytes through s3)"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$work/payload.bin"
want="$(sha256sum <"$work/payload.bin" | cut -d' ' -f1)"
cli put ./payload.bin /smoke/run-1/ckpt/model.bin --attr step=100      # a file in /work
printf 'hello from stdin\n' | cli put - /smoke/run-1/notes.txt          # stdin
expect_eq "cat model.bin sha256" "$want" "$(cli cat /smoke/run-1/ckpt/model.bin | sha256sum | cut -d' ' -f1)"
expect_eq "cat notes.txt" "hello from stdin" "$(cli cat /smoke/run-1/notes.txt)"
cli get /smoke/run-1/ckpt/model.bin ./copy.bin
expect_eq "get model.bin sha256" "$want" "$(sha256sum <"$work/copy.bin" | cut -d' ' -f1)"

# ------------------------------------------------------------ FUSE worker
if [[ -e /dev/fuse ]]; then
  say "worker: the tree mounted at /mnt/nokv in a container (FUSE)"
  dc --profile worker up -d worker
  deadline=$((SECONDS + leader_timeout))
  until dc logs --no-color worker 2>/dev/null | grep -q "mounted / on /mnt/nokv"; do
    ((SECONDS < deadline)) || { dc logs --no-color worker >&2; fail "the worker did not mount within ${leader_timeout}s"; }
    sleep 0.5 # poll interval; the loop re-checks until the deadline
  done
  # File calls inside the worker: creates, stats, removes, small files
  # written and closed (each close publishes), a 1 MiB file written and read.
  dc exec -T worker nokv bench posix --dir /mnt/nokv/smoke-worker -c 2 -n 20 --size 1MiB
  run_dir="$(cli ls /smoke-worker | head -n 1)"
  [[ "$run_dir" == posix-*/ ]] || fail "ls /smoke-worker: expected the bench's directory, got [$run_dir]"
  cli stat --json "/smoke-worker/${run_dir}t0/w0" | grep -q '"size":4096' || fail "a file the worker closed is not published whole"
  cli stat --json "/smoke-worker/${run_dir}sequential.bin" | grep -q '"size":1048576' || fail "the worker's 1 MiB file is not published whole"
  dc stop worker
  dc logs --no-color worker | grep -q "unmounted /mnt/nokv" || { dc logs --no-color worker >&2; fail "the worker did not unmount on stop"; }
  say "worker: files written through the mount are published; stop unmounts"
else
  say "no /dev/fuse on this host: skipping the worker"
fi

# ------------------------------------------------------ from the host (ports)
host_nokv="$root/target/docker/nokv/bin/nokv" # the binary in the image
if [[ -x "$host_nokv" ]]; then
  eps="127.0.0.1:${NOKV_N1_PORT:-7401},127.0.0.1:${NOKV_N2_PORT:-7402},127.0.0.1:${NOKV_N3_PORT:-7403}"
  for ep in ${eps//,/ }; do
    "$host_nokv" --endpoints "$ep" --timeout 5s status --json | grep -q '"role":"\(leader\|follower\)"' ||
      fail "host: status via $ep"
    expect_eq "host: stale ls via $ep" "ckpt/ notes.txt params.json" \
      "$("$host_nokv" --endpoints "$ep" --timeout 5s --stale ls /smoke/run-1 | tr '\n' ' ' | sed 's/ $//')"
  done
  say "host: status and --stale reads answer on each of $eps"
fi

# ------------------------------------------------------------------ restart
before="$(docker inspect -f '{{.State.StartedAt}}' "$(dc ps -q n1)")"
say "restarting the whole stack (${compose[*]} restart)"
t_restart=$SECONDS
dc restart
after="$(docker inspect -f '{{.State.StartedAt}}' "$(dc ps -q n1)")"
[[ "$before" != "$after" ]] || fail "n1 was not restarted"
wait_for_leader
say "leader again $((SECONDS - t_restart))s after 'restart'"
check_init

say "checking the data survived"
expect_eq "ls /smoke/run-1 after restart" "ckpt/ notes.txt params.json" "$(cli ls /smoke/run-1 | tr '\n' ' ' | sed 's/ $//')"
expect_eq "readlink after restart" "/smoke/run-1" "$(cli readlink /smoke/latest)"
cli xattr list /smoke/run-1/params.json | grep -q 'user.owner' || fail "xattr lost after restart"
expect_eq "cat model.bin sha256 after restart" "$want" "$(cli cat /smoke/run-1/ckpt/model.bin | sha256sum | cut -d' ' -f1)"
cli stat --json /smoke/run-1/ckpt/model.bin | grep -q '"size":3145728' || fail "stat size after restart"
cli mkdir /smoke/after-restart
cli rm /smoke/latest
expect_eq "ls /smoke after writes" "after-restart/ run-1/" "$(cli ls /smoke | tr '\n' ' ' | sed 's/ $//')"
expect_eq "cat /shared/run-2/notes.txt after restart" "in the second shard" "$(cli cat /shared/run-2/notes.txt)"
say "all checks passed"
