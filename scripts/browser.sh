#!/usr/bin/env bash
# What the browser tests (tests/browser/) need besides the Python packages: Debian's Chromium
# (Playwright drives it; no browser download) and axe-core from npm, pinned, under .browser/.
# Run by `make test` (the `browser` target); safe to run again (does nothing when both are there).
set -euo pipefail

AXE_VERSION="4.11.4"
DIR="$(cd "$(dirname "$0")/.." && pwd)/.browser"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "browser: installing chromium (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "browser: chromium is missing: apt-get install chromium (as root)" >&2
    exit 1
  fi
fi

if [ ! -f "$DIR/node_modules/axe-core/axe.min.js" ] \
  || ! grep -q "\"version\": \"$AXE_VERSION\"" "$DIR/node_modules/axe-core/package.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "browser: installing npm (Debian package)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    else
      echo "browser: npm is missing: apt-get install npm (as root)" >&2
      exit 1
    fi
  fi
  echo "browser: installing axe-core@$AXE_VERSION"
  mkdir -p "$DIR"
  npm install --silent --no-audit --no-fund --prefix "$DIR" "axe-core@$AXE_VERSION" >/dev/null
fi
echo "browser: chromium $(command -v chromium), axe-core $AXE_VERSION"
