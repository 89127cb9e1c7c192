#!/usr/bin/env bash
# Coverage-guided fuzzing of NoKV's decoders and of Holt::apply with
# cargo-fuzz (libFuzzer) on stable Rust. Targets, what each checks, and the
# recorded long runs: docs/security.md, "Fuzzing".
#
#   scripts/fuzz.sh smoke [SECONDS]        every target for SECONDS (default 25)
#                                          from its committed seeds (the test run)
#   scripts/fuzz.sh long RUNS [TARGET...]  RUNS executions of each target (default
#                                          all), one after another, growing
#                                          fuzz/corpus/<target>/ (git ignores it
#                                          except the seed-* files)
#   scripts/fuzz.sh run TARGET [ARGS...]   one target, with libFuzzer ARGS
#   scripts/fuzz.sh build                  build every target
#   scripts/fuzz.sh seeds                  rewrite the generated seeds
#                                          (fuzz/corpus/<target>/seed-*)
#
# No sanitizer (`--sanitizer none`): the code under test is safe Rust, and
# AddressSanitizer would need a nightly compiler. Builds are release with
# debug assertions (overflow checks) in fuzz/target/, apart from ../target.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script;
# replay it with `scripts/fuzz.sh run TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(client_rpc raft_message state_image log_segment apply)
# Targets whose seeds the target itself writes (from real encodings); the
# `apply` seeds are inputs a run found (see docs/security.md).
GENERATED_SEEDS=(client_rpc raft_message state_image log_segment)
# Ran-away inputs count as failures: a single input slower than this
# (seconds), or a process above this much memory (MiB).
TIMEOUT=20
RSS_LIMIT_MB=2048

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIR="fuzz/target/x86_64-unknown-linux-gnu/release"
LOG_DIR="fuzz/target/logs"

ensure_cargo_fuzz() {
    if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
        echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
        cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked
    fi
}

build() {
    ensure_cargo_fuzz
    echo "== building the fuzz targets"
    cargo fuzz build --sanitizer none
}

# run_target TARGET LIBFUZZER_ARGS... -- CORPUS_DIRS...
# Runs one target; prints libFuzzer's summary line and fails on a crash.
run_target() {
    local target="$1"
    shift
    local args=() dirs=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        args+=("$1")
        shift
    done
    [[ $# -gt 0 ]] && shift
    dirs=("$@")
    mkdir -p "$LOG_DIR" "fuzz/artifacts/$target"
    local log="$LOG_DIR/$target.log"
    local started=$SECONDS status=0
    "$BIN_DIR/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" \
        -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" \
        -print_final_stats=1 \
        "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || status=$?
    local done_line
    done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -1 || true)"
    if [[ $status -ne 0 ]]; then
        echo "!! $target FAILED (exit $status) after $((SECONDS - started)) s; log: $log" >&2
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
        return "$status"
    fi
    printf '   %-13s %s (wall %d s)\n' "$target" "${done_line:-no summary}" "$((SECONDS - started))"
}

smoke() {
    local seconds="${1:-25}"
    build
    echo "== smoke: every target for ${seconds}s from its seeds"
    SCRATCH="$(mktemp -d)"
    trap 'rm -rf "$SCRATCH"' EXIT
    for target in "${TARGETS[@]}"; do
        mkdir -p "$SCRATCH/$target" "fuzz/corpus/$target"
        # New inputs go to the scratch directory; the seeds are only read.
        run_target "$target" -max_total_time="$seconds" -- "$SCRATCH/$target" "fuzz/corpus/$target"
    done
}

long() {
    local runs="${1:?usage: scripts/fuzz.sh long RUNS [TARGET...]}"
    shift
    local targets=("$@")
    [[ ${#targets[@]} -eq 0 ]] && targets=("${TARGETS[@]}")
    build
    echo "== long: $runs executions per target"
    for target in "${targets[@]}"; do
        mkdir -p "fuzz/corpus/$target"
        run_target "$target" -runs="$runs" -- "fuzz/corpus/$target"
    done
}

seeds() {
    build
    for target in "${GENERATED_SEEDS[@]}"; do
        mkdir -p "fuzz/corpus/$target"
        rm -f "fuzz/corpus/$target"/seed-*
        NOKV_FUZZ_WRITE_SEEDS="fuzz/corpus/$target" "$BIN_DIR/$target" -runs=0 >/dev/null 2>&1
        echo "   $target: $(find "fuzz/corpus/$target" -name 'seed-*' | wc -l) seeds"
    done
}

cmd="${1:-smoke}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
smoke) smoke "$@" ;;
long) long "$@" ;;
build) build ;;
seeds) seeds ;;
run)
    target="${1:?usage: scripts/fuzz.sh run TARGET [ARGS...]}"
    shift
    build
    mkdir -p "fuzz/artifacts/$target"
    exec "$BIN_DIR/$target" -artifact_prefix="fuzz/artifacts/$target/" \
        -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" "$@"
    ;;
*)
    echo "usage: scripts/fuzz.sh smoke [SECONDS] | long RUNS [TARGET...] | run TARGET [ARGS...] | build | seeds" >&2
    exit 2
    ;;
esac
