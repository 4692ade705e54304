#!/usr/bin/env bash
# The whole test suite on a fresh machine: install/start what the tests need, then run them.
#   scripts/test.sh            # everything
#   scripts/test.sh --test webhooks   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

# Leftover per-test databases from interrupted runs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "select datname from pg_database where datname like 'endor\_test\_%'" 2>/dev/null |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done

# The API tools the OpenAPI document and the forge conformance checks are held to (PyPI), and
# GitHub's example webhook payloads (npm) the ingest test replays.
bash scripts/api-tools.sh
bash scripts/webhook-examples.sh
# A real SMTP server (aiosmtpd) for the notification tests (tests/dashboard.rs).
bash scripts/mail-tools.sh
# Debian's chromium with playwright-core and axe-core (npm) for the browser test (tests/browser.rs).
bash scripts/browser-tools.sh
# restic and rclone for the backup tests (tests/backups.rs).
bash scripts/backup-tools.sh

# The docker runtime tests need dockerd and a locally built base image.
bash scripts/docker.sh
# Containers and networks of sites left by an interrupted run (tests release their own).
docker ps -aq --filter label=endor.site | xargs -r docker rm -f >/dev/null 2>&1 || true
docker network ls -q --filter label=endor.site | xargs -r docker network rm >/dev/null 2>&1 || true

# Clone-engine tests need a filesystem with reflink (XFS image, loop-mounted).
mnt=$(bash scripts/reflink-fs.sh)
export ENDOR_TEST_REFLINK_DIR="${ENDOR_TEST_REFLINK_DIR:-$mnt/endor-test}"
mkdir -p "$ENDOR_TEST_REFLINK_DIR"
# Per-site PostgreSQL servers left by an interrupted run (tests stop their own).
pkill -INT -f "postgres -D ($ENDOR_TEST_REFLINK_DIR|/var/tmp/\.tmp)" 2>/dev/null || true
pkill -TERM -f "mariadbd --no-defaults --datadir=($ENDOR_TEST_REFLINK_DIR|/var/tmp/\.tmp)" 2>/dev/null || true
find "$ENDOR_TEST_REFLINK_DIR" -mindepth 1 -maxdepth 1 -mmin +60 -exec rm -rf {} + 2>/dev/null || true

mariadb --no-defaults -h 127.0.0.1 -uroot -N -B -e "SHOW DATABASES LIKE 'endor\\_test\\_%'" 2>/dev/null |
  while read -r db; do mariadb --no-defaults -h 127.0.0.1 -uroot -e "DROP DATABASE \`$db\`" >/dev/null 2>&1 || true; done

export ENDOR_TEST_PG="${ENDOR_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
