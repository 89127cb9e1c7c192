#!/usr/bin/env bash
# Runs the whole NoKV test suite: format check, clippy, and every test
# (unit, property, storage conformance, multi-process clusters, and the
# Jepsen smoke runs against three-node clusters in Docker containers).
#
# On a fresh Debian/Ubuntu machine with Rust (rustup) and a Docker engine it
# first installs what it needs: the rustfmt and clippy components, s3s-fs (a
# real S3 server, from crates.io), and the Docker images nokv:dev and
# nokv-s3s-fs:dev, built locally from this checkout (no registry access), and
# etcd (Debian's etcd-server) for the control-plane tests, and fuse3, rsync,
# git and pjdfstest (built from crates.io; for the FUSE mount tests), and
# the official Python MCP client in a virtualenv (from PyPI), and
# cargo-fuzz (from crates.io) for a short run of every fuzz target.
# protoc comes from a vendored crate.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-off build gains nothing from incremental caches (1.3 GiB of the
# target directory); machines with little free disk need the room.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "s3s-fs (a real S3 server for the object-store tests)"
bash blob/install-s3s-fs.sh

step "etcd (a real control plane for the router and multi-shard tests)"
bash router/install-etcd.sh

step "fuse3, rsync, git (for the FUSE mount tests)"
bash fuse-client/install-fuse.sh

step "pjdfstest (POSIX conformance of the FUSE mount)"
bash fuse-client/install-pjdfstest.sh
export PATH="$HOME/.cargo/bin:$PATH"

step "the official Python MCP client (for the MCP tests)"
bash gateway/install-mcp-client.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "docker images for the Jepsen smoke runs (from the debug build, with the test-only clock offset)"
command -v docker >/dev/null 2>&1 || { echo "test.sh: Docker is required (the Jepsen smoke runs start containers)" >&2; exit 1; }
cargo build -p nokv-cli --bin nokv --features clock-skew
NOKV_BIN=target/debug/nokv bash docker/build.sh

# The test build carries the test-only clock offset too (inert unless
# NOKV_TEST_CLOCK_OFFSET_FILE is set), so meta-node is built one way only
# and the offset's own unit tests run.
step "cargo test"
cargo test --workspace --features nokv-cli/clock-skew -- --test-threads "${NOKV_TEST_THREADS:-2}"

step "fuzzing: every target for 15 s from its seeds (long runs: docs/security.md)"
bash scripts/fuzz.sh smoke 15

step "docker compose smoke (up, use, restart, data survives, down)"
NOKV_SMOKE_SKIP_BUILD=1 bash docker/smoke.sh
