#!/usr/bin/env bash
# Installs fusermount3 (Debian's fuse3) for `nokv mount` and its tests: the
# mount itself needs no libfuse, but releasing the mount point when the
# mounting process dies (auto-unmount) goes through fusermount3.
# Idempotent: does nothing when `fusermount3` is already on PATH. Debian/Ubuntu
# (apt-get) only; elsewhere install your distribution's fuse3 package.
set -euo pipefail

if command -v fusermount3 >/dev/null 2>&1; then
    echo "fusermount3 already installed: $(command -v fusermount3)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-fuse.sh: apt-get not found; install fuse3 (fusermount3) yourself" >&2
    exit 1
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
    sudo="sudo"
fi

if ! apt-cache show fuse3 >/dev/null 2>&1; then
    $sudo apt-get update
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends fuse3

if [[ ! -e /dev/fuse ]]; then
    echo "install-fuse.sh: /dev/fuse is missing; the mount tests need the fuse kernel module" >&2
    exit 1
fi
echo "installed: $(command -v fusermount3)"
