#!/usr/bin/env bash
# A real SMTP server for the notification tests: Python's aiosmtpd (PyPI). Idempotent.
set -euo pipefail
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
fi
python3 -c "import aiosmtpd" 
