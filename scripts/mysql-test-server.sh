#!/usr/bin/env bash
# MariaDB for the mysql source tests: installs mariadb-server (Debian package) when
# mariadbd is missing, and makes sure a server answers on 127.0.0.1:3306 as root without a
# password (the tests create and drop their own databases there; scratch servers they start
# themselves). Idempotent. Set BACKUPD_SKIP_MYSQL_TESTS=1 to skip the tests instead.
set -euo pipefail

answers() { mariadb -h 127.0.0.1 -P 3306 -u root --connect-timeout=3 -e 'SELECT 1' >/dev/null 2>&1; }

if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ] \
  || ! command -v mariadb-install-db >/dev/null 2>&1 || ! command -v mariadb >/dev/null 2>&1; then
  echo "installing mariadb-server (apt-get)" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "error: mariadb-server is missing and this is not root; install it or set BACKUPD_SKIP_MYSQL_TESTS=1" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq mariadb-server mariadb-client >/dev/null
fi

if answers; then
  exit 0
fi
echo "starting the local MariaDB on 127.0.0.1:3306" >&2
if command -v service >/dev/null 2>&1; then
  service mariadb start >/dev/null 2>&1 || true
fi
for _ in $(seq 1 30); do answers && break; sleep 1; done
if ! answers; then
  # No service manager: run one in a cache directory.
  DIR="$HOME/.cache/backupd-test-servers/mariadb-3306"
  if [ ! -d "$DIR/data/mysql" ]; then
    mkdir -p "$DIR"
    mariadb-install-db --no-defaults --datadir="$DIR/data" --user=root \
      --auth-root-authentication-method=normal >/dev/null
  fi
  nohup mariadbd --no-defaults --datadir="$DIR/data" --port=3306 --bind-address=127.0.0.1 \
    --socket="$DIR/s" --pid-file="$DIR/pid" --user=root >"$DIR/server.log" 2>&1 &
  for _ in $(seq 1 60); do answers && break; sleep 1; done
fi
answers || { echo "error: no MariaDB answers on 127.0.0.1:3306 (see above); set BACKUPD_SKIP_MYSQL_TESTS=1 to skip" >&2; exit 1; }
# root over TCP without a password, as test-servers.md describes.
mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null
