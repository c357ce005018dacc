#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver (chromium, chromium-driver) where they are missing,
# for tests/serve/test_page.py. Needs root and apt; says so and returns 1 where it cannot.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser] chromium/chromedriver missing and this is not root with apt-get: the page test" \
       "will be skipped (install them: apt-get install chromium chromium-driver)" >&2
  exit 1
fi
echo "[browser] installing chromium and chromium-driver from Debian"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; then
  echo "[browser] apt-get could not install chromium: the page test will be skipped" >&2
  exit 1
fi
