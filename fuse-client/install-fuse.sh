#!/usr/bin/env bash
# Installs what `nokv mount` and its tests need: fusermount3 (Debian's fuse3;
# the mount itself needs no libfuse, but releasing the mount point when the
# mounting process dies, auto-unmount, goes through fusermount3), and the
# real programs the tests run on a mount (git, rsync).
# Idempotent: installs only what is missing from PATH. Debian/Ubuntu
# (apt-get) only; elsewhere install your distribution's packages.
set -euo pipefail

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v git >/dev/null 2>&1 || missing+=(git)

if [[ ${#missing[@]} -gt 0 ]]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-fuse.sh: apt-get not found; install ${missing[*]} yourself" >&2
        exit 1
    fi
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo="sudo"
    fi
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        $sudo apt-get update
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [[ ! -e /dev/fuse ]]; then
    echo "install-fuse.sh: /dev/fuse is missing; the mount tests need the fuse kernel module" >&2
    exit 1
fi
echo "fusermount3: $(command -v fusermount3); rsync: $(command -v rsync); git: $(command -v git)"
