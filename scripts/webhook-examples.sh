#!/usr/bin/env bash
# GitHub's own example webhook payloads (npm @octokit/webhooks-examples, MIT), every event and
# action, which tests/webhooks.rs replays against the real server. Fetched with `npm pack` into
# a folder of their own; idempotent (a present copy of the wanted version is kept).
#   scripts/webhook-examples.sh      # into /var/tmp/endor/webhooks-examples (ENDOR_TEST_GH_EXAMPLES)
set -euo pipefail
dir="${ENDOR_TEST_GH_EXAMPLES:-/var/tmp/endor/webhooks-examples}"
want="7.6.1"
if [ -f "$dir/package/api.github.com/index.json" ] &&
  grep -q "\"version\": \"$want\"" "$dir/package/package.json" 2>/dev/null; then
  echo "[webhook-examples] @octokit/webhooks-examples $want is here ($dir)" >&2
  exit 0
fi
command -v npm >/dev/null || { echo "[webhook-examples] npm is missing (Debian: nodejs npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for attempt in 1 2 3; do
  if (cd "$tmp" && npm pack --silent "@octokit/webhooks-examples@$want" >/dev/null); then
    break
  fi
  [ "$attempt" = 3 ] && { echo "[webhook-examples] npm pack failed" >&2; exit 1; }
  sleep 5
done
rm -rf "$dir.new"
mkdir -p "$dir.new"
tar xzf "$tmp"/octokit-webhooks-examples-"$want".tgz -C "$dir.new"
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "[webhook-examples] @octokit/webhooks-examples $want unpacked into $dir" >&2
