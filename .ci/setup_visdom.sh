#!/usr/bin/env bash
# What tests/test_visdom.py needs besides the Python install: Debian's chromium (the browser
# test drives its command line, so no chromedriver), and visdom's web assets, which
# `runner visdom install-assets` takes from npm packages (so npm too). Run as root, with the
# project's venv active (or PYTHON naming its interpreter). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup_visdom: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

"$PYTHON" -m runner visdom install-assets
