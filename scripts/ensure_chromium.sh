#!/usr/bin/env bash
# The browser tests drive a real headless Chromium from Debian's packages (never a downloaded build).
# Install it with apt when missing and we are root. Without it the browser tests skip, except in CI
# (CI set), where they fail: CI must run them.
set -uo pipefail
log() { echo "ensure_chromium: $*" >&2; }
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing chromium with apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || log "apt-get install chromium failed; the browser tests will skip (fail in CI)"
else
  log "chromium is not installed and we cannot install it; the browser tests will skip (fail in CI)"
fi
exit 0
