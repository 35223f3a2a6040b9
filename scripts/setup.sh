#!/usr/bin/env bash
# Set-up of this machine for pi2pi: Debian packages and .venv.
#
#   scripts/setup.sh           the controller's (make setup): Ansible, fab and
#                              what the playbooks call; all a Pi as natpi needs
#   scripts/setup.sh test      and the test bench's (make setup-test): the
#                              runtime's libraries, the lab, the VMs, linters,
#                              pytest, fuzzing
#
# Re-runs are cheap: each step is skipped when what it installs is already there
# (apt: every package present; venv: a stamp per set of the requirement files' hash).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-controller}
case $kind in
    controller) apt_lists=(apt-packages.txt) requirements=requirements.txt ;;
    test) apt_lists=(apt-packages.txt apt-packages-test.txt apt-packages-hw.txt) requirements=requirements-test.txt ;;
    *) echo "usage: $0 [controller|test]" >&2; exit 2 ;;
esac
# Ansible here (ansible-core 2.19, requirements.txt) runs on Python 3.11 or later:
# Raspberry Pi OS 12. On OS 11 (Python 3.9) pip would fail deep in the venv's
# build; say so first, before anything is installed. PI2PI_PYTHON: for the tests.
python=${PI2PI_PYTHON:-/usr/bin/python3}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$(printf '%s\n' 3.11 "$version" | sort -V | head -n1)" != 3.11 ]; then
    echo "setup: this machine's Python is $version; pi2pi's controller (Ansible, fab) needs 3.11 or later" \
         "(Raspberry Pi OS 12 or Debian 12). A Pi on OS 11 can be gwpi, not the controller: docs/raspberry-pi.md" >&2
    exit 1
fi

# 32-bit ARM (Raspberry Pi OS armhf): Debian's copies of what PyPI has no wheel of.
armv7=
if [ "$(uname -m)" = armv7l ]; then
    armv7=1
    apt_lists+=(apt-packages-armhf.txt)
fi

want_apt() { grep -hvE '^\s*(#|$)' "$@"; }

missing=()
for pkg in $(want_apt "${apt_lists[@]}"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get)" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# On armv7l the pins of what Debian installed (apt-packages-armhf.txt and what
# it pulled in) give way: the venv takes Debian's copies from the system site
# packages instead of compiling PyPI's sdists.
constraints=constraints.txt
if [ -n "$armv7" ]; then
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    "$python" - constraints.txt >"$constraints" <<'PY'
import importlib.metadata
import re
import sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

debian = {norm(d.metadata["Name"]) for d in importlib.metadata.distributions(path=["/usr/lib/python3/dist-packages"])}
for line in open(sys.argv[1]):
    name = re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0]
    if line.startswith("#") or norm(name) not in debian:
        sys.stdout.write(line)
PY
fi

# Debian's python3, as on Raspberry Pi OS; system site packages for python3-numpy
# (no armv7 wheel on PyPI, so a Pi uses Debian's).
stamp=.venv/.pi2pi-setup-$kind
hash=$(cat requirements*.txt constraints.txt runtime/pyproject.toml "${apt_lists[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
    echo "setup: .venv with $requirements"
    "$python" -m venv --system-site-packages .venv
    .venv/bin/pip install -q --disable-pip-version-check -r "$requirements" -c "$constraints"
    if [ "$kind" = test ]; then
        .venv/bin/pip install -q --disable-pip-version-check --no-deps -e runtime
    fi
    echo "$hash" > "$stamp"
fi
