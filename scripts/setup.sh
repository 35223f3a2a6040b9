#!/usr/bin/env bash
# One-time set-up of this machine for pi2pi: Debian packages and .venv.
# Re-runs are cheap: each step is skipped when what it installs is already there
# (apt: every package present; venv: a stamp of the requirement files' hash).
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt() { grep -hvE '^\s*(#|$)' "$@"; }

missing=()
for pkg in $(want_apt apt-packages.txt "$@"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get)" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3, as on Raspberry Pi OS; system site packages for python3-numpy
# (no armv7 wheel on PyPI, so a Pi uses Debian's).
stamp=.venv/.pi2pi-setup
hash=$(cat requirements.txt constraints.txt runtime/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    echo "setup: creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e runtime
    echo "$hash" > "$stamp"
fi
