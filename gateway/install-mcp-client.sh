#!/usr/bin/env bash
# Installs the official Python MCP SDK (PyPI `mcp`, pinned) into a virtualenv
# that the MCP client tests (cli/tests/gateway_mcp.rs running
# gateway/tests/mcp_client.py) use as a real, independent MCP client.
#
# Location: ${NOKV_MCP_VENV:-$HOME/.cache/nokv/mcp-venv}
#           (its interpreter is <venv>/bin/python).
# Idempotent: does nothing when the venv already imports mcp at the pinned
# version. Needs python3 (3.10 or newer) with the venv module.
set -euo pipefail

MCP_VERSION="2.3.0"
VENV="${NOKV_MCP_VENV:-$HOME/.cache/nokv/mcp-venv}"
PY="$VENV/bin/python"

installed_version() {
    "$PY" - <<'EOF' 2>/dev/null
from importlib.metadata import version
import mcp  # noqa: F401  (the import itself must work)
print(version("mcp"))
EOF
}

if [ -x "$PY" ] && [ "$(installed_version || true)" = "$MCP_VERSION" ]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-mcp-client.sh: $PYTHON not found; install Python 3.10+ (with venv)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "install-mcp-client.sh: $PYTHON is $("$PYTHON" --version 2>&1); mcp $MCP_VERSION needs 3.10+" >&2
    exit 1
fi

mkdir -p "$(dirname "$VENV")"
if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_VERSION"

got="$(installed_version || true)"
if [ "$got" != "$MCP_VERSION" ]; then
    echo "install-mcp-client.sh: mcp $MCP_VERSION did not install into $VENV (found: ${got:-none})" >&2
    exit 1
fi
