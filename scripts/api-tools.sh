#!/usr/bin/env bash
# The third-party API tools the tests hold endor's OpenAPI document to, from PyPI, in a
# virtualenv of their own: openapi-spec-validator (is the document valid?) and schemathesis
# (property-based requests generated from it). Idempotent: a present, matching install is kept.
#   scripts/api-tools.sh            # installs into /var/tmp/endor/py (ENDOR_TEST_PYENV)
set -euo pipefail
venv="${ENDOR_TEST_PYENV:-/var/tmp/endor/py}"
want_st="4.32.5"
want_osv="0.9.0"
have() {
  [ -x "$venv/bin/schemathesis" ] && [ -x "$venv/bin/openapi-spec-validator" ] || return 1
  local shown
  shown=$("$venv/bin/pip" show schemathesis openapi-spec-validator 2>/dev/null) || return 1
  [[ "$shown" == *"Name: schemathesis"$'\n'"Version: $want_st"* ]] &&
    [[ "$shown" == *"Name: openapi-spec-validator"$'\n'"Version: $want_osv"* ]]
}
if have; then
  echo "[api-tools] schemathesis $want_st and openapi-spec-validator $want_osv are here ($venv)" >&2
  exit 0
fi
mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
for attempt in 1 2 3; do
  if "$venv/bin/pip" install -q --disable-pip-version-check \
    "schemathesis==$want_st" "openapi-spec-validator==$want_osv"; then
    break
  fi
  [ "$attempt" = 3 ] && { echo "[api-tools] pip install failed" >&2; exit 1; }
  sleep 5
done
have || { echo "[api-tools] installed, but the versions do not match" >&2; exit 1; }
echo "[api-tools] installed schemathesis $want_st and openapi-spec-validator $want_osv into $venv" >&2
