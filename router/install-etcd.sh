#!/usr/bin/env bash
# Installs etcd (server and etcdctl) for the nokv-router tests, which start a real etcd.
# Idempotent: does nothing when `etcd` is already on PATH. Debian/Ubuntu (apt-get) only;
# elsewhere, install etcd 3.4+ yourself or point NOKV_ETCD_BIN at its binary.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
    echo "etcd already installed: $(command -v etcd) ($(etcd --version 2>/dev/null | head -n 1))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-etcd.sh: apt-get not found; install etcd 3.4+ and put it on PATH" >&2
    exit 1
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
    sudo="sudo"
fi

# Refresh the package lists only if apt does not know the package yet.
if ! apt-cache show etcd-server >/dev/null 2>&1; then
    $sudo apt-get update
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends etcd-server etcd-client

# The package may start a system etcd on the default ports; the tests use their own ports,
# so that is harmless, but say so.
echo "installed: $(command -v etcd) ($(etcd --version | head -n 1))"
