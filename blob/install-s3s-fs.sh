#!/usr/bin/env bash
# Installs the s3s-fs S3 server used by the nokv-blob S3 conformance tests.
#
# Idempotent: does nothing when `s3s-fs` of the pinned version is already on
# PATH or in ~/.cargo/bin. Newer s3s-fs releases need a newer Rust than ours,
# so the version is pinned. Takes about 2-3 minutes on 2 cores when it builds.
#
# Override the version with S3S_FS_VERSION (at your own risk).
set -euo pipefail

version="${S3S_FS_VERSION:-0.14.1}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

installed_version() {
  # `cargo install --list` prints "s3s-fs v0.14.1:" for crates it installed.
  cargo install --list 2>/dev/null | sed -n 's/^s3s-fs v\([^:]*\):$/\1/p' | head -n 1
}

have="$(installed_version || true)"
if [[ "$have" == "$version" ]] && { command -v s3s-fs >/dev/null 2>&1 || [[ -x "$cargo_bin/s3s-fs" ]]; }; then
  echo "s3s-fs $version already installed"
  exit 0
fi

echo "installing s3s-fs $version (about 2-3 minutes)"
cargo install "s3s-fs@$version" --features binary --locked
echo "s3s-fs $version installed in $cargo_bin"
