#!/usr/bin/env bash
# Installs pjdfstest (the Rust rewrite of the POSIX file system test suite,
# from crates.io) for the FUSE conformance test, and what it needs: the
# libacl headers to build it, and the dummy users and groups it switches to
# (`tests`, `pjdfstest`; `nobody`/`nogroup` come with Debian).
# Idempotent. Debian/Ubuntu (apt-get) only.
set -euo pipefail

VERSION=0.2.2

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
    sudo="sudo"
fi

if ! dpkg -s libacl1-dev >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-pjdfstest.sh: apt-get not found; install libacl1-dev yourself" >&2
        exit 1
    fi
    if ! apt-cache show libacl1-dev >/dev/null 2>&1; then
        $sudo apt-get update
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends libacl1-dev
fi

for user in tests pjdfstest; do
    if ! getent passwd "$user" >/dev/null; then
        $sudo useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$user"
    fi
done

if command -v pjdfstest >/dev/null 2>&1 && cargo install --list | grep -q "^pjdfstest v$VERSION:"; then
    echo "pjdfstest $VERSION already installed: $(command -v pjdfstest)"
    exit 0
fi
cargo install pjdfstest --version "$VERSION" --locked
echo "installed: $(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")"
