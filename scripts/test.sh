#!/usr/bin/env bash
# The whole test suite on a fresh machine: install/start what the tests need, then run them.
#   scripts/test.sh            # everything
#   scripts/test.sh webhooks   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

# Leftover per-test databases from interrupted runs.
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "select datname from pg_database where datname like 'endor\_test\_%'" 2>/dev/null |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done

export ENDOR_TEST_PG="${ENDOR_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
cargo test --locked "$@"
