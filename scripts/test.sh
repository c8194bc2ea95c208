#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is
# missing (cargo-nextest, chromium) and makes sure the local PostgreSQL (catalog tests)
# is up. Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backupd/target}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The catalog suite runs against PostgreSQL on 127.0.0.1:5432 (trust auth).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting the local PostgreSQL cluster" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# The mysql source tests use the local MariaDB on 127.0.0.1:3306 and start scratch mariadbd
# servers: scripts/mysql-test-server.sh installs mariadb-server (apt-get, as root) when it is
# missing and starts the local server when it does not answer.
if [ "${BACKUPD_SKIP_MYSQL_TESTS:-}" != 1 ]; then
  scripts/mysql-test-server.sh \
    || echo "MariaDB is not ready (see above): the mysql tests will fail; BACKUPD_SKIP_MYSQL_TESTS=1 skips them" >&2
fi

# The S3 sink tests start SeaweedFS and moto, the MongoDB tests SecantusDB, installed once
# into a venv under ~/.cache.
if [ "${BACKUPD_SKIP_S3_TESTS:-}" != 1 ] || [ "${BACKUPD_SKIP_MONGO_TESTS:-}" != 1 ]; then
  scripts/test-servers.sh
fi

# The status page test screenshots the page with headless Chromium (Debian's package).
if [ "${BACKUPD_SKIP_BROWSER_TESTS:-}" != 1 ] && ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (headless, for the status page test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "chromium is missing: apt-get install chromium, or set BACKUPD_SKIP_BROWSER_TESTS=1" >&2
  fi
fi

# docker-compose.yml and deploy/k8s/ against their schemas (validators from PyPI, cached).
if [ "${BACKUPD_SKIP_DEPLOY_CHECKS:-}" != 1 ]; then
  scripts/validate-deploy.sh
else
  echo "BACKUPD_SKIP_DEPLOY_CHECKS=1: not validating docker-compose.yml and deploy/k8s" >&2
fi

exec cargo nextest run --workspace --no-fail-fast "$@"
