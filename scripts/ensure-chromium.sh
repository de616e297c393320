#!/bin/sh
# Make sure Debian's Chromium is installed (for the browser tests); idempotent and quiet.
#
# Does nothing when /usr/bin/chromium (or $CHROMIUM) exists. Otherwise installs the `chromium`
# package with apt-get, without recommended packages, and prints one line. Needs root (or sudo)
# and Debian's package archive; exits non-zero, saying why, if it cannot install.
set -eu

if [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no /usr/bin/chromium and no apt-get; install Chromium and set CHROMIUM=/path/to/it" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo -n"
    else
        echo "ensure-chromium: installing chromium needs root (or sudo)" >&2
        exit 1
    fi
fi
echo "ensure-chromium: installing Debian's chromium package (once)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $sudo apt-get update -qq && \
       $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-chromium: apt-get failed (output above)" >&2
    exit 1
fi
if [ ! -x /usr/bin/chromium ]; then
    echo "ensure-chromium: the chromium package installed no /usr/bin/chromium" >&2
    exit 1
fi
