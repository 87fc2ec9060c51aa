#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for
# broker/tests/admin.rs, which opens the admin console in it. Idempotent:
# nothing is done when a chromium is on PATH already.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
(command -v chromium || command -v chromium-browser) | head -1
