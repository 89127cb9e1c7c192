#!/usr/bin/env bash
# Runs the whole NoKV test suite: format check, clippy, and every test
# (unit, property, storage conformance, multi-process clusters).
#
# On a fresh Debian/Ubuntu machine with Rust (rustup) it first installs what
# it needs: the rustfmt and clippy components and s3s-fs (a real S3 server,
# from crates.io). protoc comes from a vendored crate; every test runs on
# loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "s3s-fs (a real S3 server for the object-store tests)"
bash blob/install-s3s-fs.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace -- --test-threads "${NOKV_TEST_THREADS:-2}"
