#!/usr/bin/env bash
# A real headless browser for the dashboard's browser test (tests/browser.rs): Debian's
# chromium, driven by playwright-core (npm, no browser download), and axe-core (npm) for the
# accessibility checks. Idempotent.
#   scripts/browser-tools.sh      # node modules into /var/tmp/endor/browser (ENDOR_TEST_BROWSER_DIR)
set -euo pipefail
dir="${ENDOR_TEST_BROWSER_DIR:-/var/tmp/endor/browser}"
if ! command -v chromium >/dev/null; then
  echo "[browser] installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq chromium >/dev/null
fi
want_pw="1.64.1"
want_axe="4.14.1"
if [ -f "$dir/node_modules/playwright-core/package.json" ] &&
  grep -q "\"version\": \"$want_pw\"" "$dir/node_modules/playwright-core/package.json" &&
  grep -q "\"version\": \"$want_axe\"" "$dir/node_modules/axe-core/package.json" 2>/dev/null; then
  echo "[browser] chromium, playwright-core $want_pw and axe-core $want_axe are here ($dir)" >&2
  exit 0
fi
command -v npm >/dev/null || { echo "[browser] npm is missing (Debian: nodejs npm)" >&2; exit 1; }
mkdir -p "$dir"
for attempt in 1 2 3; do
  if (cd "$dir" && npm install --silent --no-audit --no-fund "playwright-core@$want_pw" "axe-core@$want_axe" >/dev/null); then
    break
  fi
  [ "$attempt" = 3 ] && { echo "[browser] npm install failed" >&2; exit 1; }
  sleep 5
done
echo "[browser] playwright-core $want_pw and axe-core $want_axe installed into $dir" >&2
