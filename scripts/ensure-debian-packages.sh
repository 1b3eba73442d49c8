#!/usr/bin/env bash
# Install Debian packages whose binaries are missing.
#
#   scripts/ensure-debian-packages.sh PKG[:BINARY]...
#
# For each argument, BINARY (default: PKG) is looked up on PATH; the packages whose binary is
# missing are installed with apt-get, quietly, in one go. Nothing is done (and nothing printed)
# when every binary is there. Installing needs root: anyone else gets a clear error naming the
# command to run. Example: scripts/ensure-debian-packages.sh prometheus:promtool
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PKG[:BINARY]..." >&2
    exit 2
fi

missing=()
for arg in "$@"; do
    pkg=${arg%%:*}
    bin=${arg#*:}
    if ! [[ "$pkg" =~ ^[a-z0-9][a-z0-9.+-]+$ ]]; then
        echo "$0: not a Debian package name: '$pkg'" >&2
        exit 2
    fi
    if ! command -v "$bin" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: missing Debian package(s): ${missing[*]}; installing needs root." >&2
    echo "Run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$0: missing package(s) ${missing[*]} and no apt-get on this machine." >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; }
# A fresh machine may have no package lists yet: update once, then retry.
if ! apt_install && ! { apt-get update -q >>"$log" 2>&1 && apt_install; }; then
    echo "$0: apt-get could not install: ${missing[*]}" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
for arg in "$@"; do
    bin=${arg#*:}
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "$0: installed ${arg%%:*} but '$bin' is still not on PATH" >&2
        exit 1
    fi
done
echo "installed Debian package(s): ${missing[*]}" >&2
