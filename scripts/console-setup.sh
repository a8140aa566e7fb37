#!/usr/bin/env bash
# Set-up for the web console (/console/) and its browser test (tests/test_console.py):
#   - Debian's chromium and a CJK font (fonts-wqy-microhei), so headless screenshots show
#     Chinese characters instead of empty boxes;
#   - ECharts from npm into console/node_modules/ (git-ignored), served as
#     /console/vendor/echarts.min.js;
#   - Python playwright in the project's venv (drives /usr/bin/chromium; the script never
#     runs `playwright install`, which downloads a browser build and fails here).
# Idempotent and quiet: every step is skipped when its result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

say() { printf 'console-setup: %s\n' "$*"; }

# run quietly; show the output only when the command fails
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root for: $*" >&2
        return 1
    fi
}

# 1. chromium + fonts-wqy-microhei (Debian packages)
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet as_root apt-get update -qq
    quiet as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. ECharts from npm (console/package-lock.json pins it)
if [ ! -f "$ROOT/console/node_modules/echarts/dist/echarts.min.js" ] \
        || [ "$ROOT/console/package-lock.json" -nt "$ROOT/console/node_modules/.package-lock.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        say "npm is missing: install Node.js (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
    say "npm ci in console/"
    (cd "$ROOT/console" && { quiet npm ci --no-audit --no-fund --loglevel=error \
        || quiet npm install --no-audit --no-fund --loglevel=error; })
fi

# 3. playwright (Python) in the venv, if there is a venv
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import playwright' 2>/dev/null; then
    say "pip install playwright"
    quiet "$VENV/bin/pip" install -q playwright
fi
exit 0
