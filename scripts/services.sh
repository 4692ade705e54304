#!/usr/bin/env bash
# Make sure the services the test suite needs are installed and running. Idempotent: on the
# project's machines they already run and this only checks; on a fresh Debian machine (as root)
# it installs and starts them.
#   PostgreSQL on 127.0.0.1:5432 reachable as postgres without a password (trust on loopback)
#   MariaDB on 127.0.0.1:3306 as root with an empty password
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root to install $*"; return 1; fi
  if [ $apt_updated = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ok() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if pg_ok; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
  for _ in $(seq 1 50); do pg_ok && return 0; pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break; sleep 0.2; done
  if ! pg_ok; then
    # A fresh install asks for passwords on TCP: the tests expect trust on loopback.
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if [ -w "$hba" ] && ! grep -q '^# endor-test' "$hba"; then
      log "allowing trust auth on loopback for the tests ($hba)"
      { echo '# endor-test: trust on loopback for the test suite'
        echo 'host all all 127.0.0.1/32 trust'
        echo 'host all all ::1/128 trust'
        cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
      pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
    fi
    for _ in $(seq 1 50); do pg_ok && break; sleep 0.2; done
  fi
  pg_ok || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; return 1; }
}

maria_ok() { mariadb -h 127.0.0.1 -P 3306 -uroot -e 'select 1' >/dev/null 2>&1; }

ensure_mariadb() {
  if maria_ok; then return 0; fi
  if [ ! -x /usr/sbin/mariadbd ]; then
    log "installing MariaDB"
    apt_install mariadb-server mariadb-client
  fi
  log "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 100); do maria_ok && return 0; sleep 0.2; done
  log "MariaDB is not reachable on 127.0.0.1:3306"; return 1
}

command -v psql >/dev/null 2>&1 || apt_install postgresql-client
# `ss` (the isolation tests check that no site database server listens on TCP).
command -v ss >/dev/null 2>&1 || apt_install iproute2
ensure_postgres
ensure_mariadb
# Clone engine: MariaDB generations are taken with mariadb-backup.
command -v mariadb-backup >/dev/null 2>&1 || apt_install mariadb-backup
# The default sandbox for PR code (bubblewrap) and the isolated network (pasta, from passt).
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
command -v pasta >/dev/null 2>&1 || apt_install passt
# pasta opens /dev/net/tun as the site's uid: udev makes it 0666 on a usual machine.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ] && [ "$(id -u)" = 0 ]; then
  chmod 0666 /dev/net/tun
fi
log "PostgreSQL and MariaDB are up; bubblewrap and pasta installed"
