#!/usr/bin/env bash
# An emulated Raspberry Pi OS-like root (Debian SUITE for ARCH, built with
# mmdebstrap, run through qemu-user via binfmt_misc), cached: prints its path.
#
#   tests/arm/root.sh SUITE ARCH [KIND]   e.g. tests/arm/root.sh bookworm armhf
#
# KIND names the package list KIND-packages.txt beside this script: runtime
# (default: a Pi's packages for the runtime) or controller (a bare root).
# The cache (PI2PI_ARM_CACHE, default /var/cache/pi2pi-arm) keeps one root per
# suite, arch and kind, keyed by a hash of the package list and mmdebstrap's options:
# a re-run with the same list prints the same root at once; a changed list
# builds a new one and removes the old. Callers must not write into it (the
# tests lay a writable overlay on top).
set -euo pipefail
suite=$1 arch=$2 kind=${3:-runtime}
here=$(cd "$(dirname "$0")" && pwd)
cache=${PI2PI_ARM_CACHE:-/var/cache/pi2pi-arm}
log() { echo "arm-root: $*" >&2; }

# Emulation: qemu-user-static registers its interpreters with binfmt_misc
# (flag F: the kernel keeps the interpreter open, so it works in a chroot).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
qemu=$(case $arch in armhf|armel) echo qemu-arm ;; arm64) echo qemu-aarch64 ;; *) echo "qemu-$arch" ;; esac)
if [ ! -e "/proc/sys/fs/binfmt_misc/$qemu" ]; then
    update-binfmts --enable "$qemu"
fi

packages=$(grep -hvE '^\s*(#|$)' "$here/$kind-packages.txt" | tr '\n' ',')
# No documentation, manual pages or translations: less to unpack under
# emulation, nothing a test reads. Recommends are off (mmdebstrap's default).
options=(--variant=apt --arch="$arch" --include="${packages%,}"
         --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
         --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
         --aptopt='Acquire::Retries "3"')
key=$(printf '%s\n' "$suite" "${options[@]}" | sha256sum | cut -c1-16)
name=$suite-$arch-$kind
root=$cache/$name-$key
mkdir -p "$cache"
exec 8>"$cache/$name.lock"
flock 8
if [ ! -e "$root/.pi2pi-root" ]; then
    start=$(date +%s)
    log "building $name in $root (mmdebstrap, emulated: minutes)"
    rm -rf "$root.new"
    mmdebstrap --quiet "${options[@]}" "$suite" "$root.new" >&2
    echo "$name $(date -u +%FT%TZ)" > "$root.new/.pi2pi-root"
    mv "$root.new" "$root"
    for old in "$cache/$name-"*/; do   # the roots of older keys
        [ "${old%/}" = "$root" ] || rm -rf "${old%/}"
    done
    log "built $name in $(( $(date +%s) - start )) s, $(du -sm "$root" | cut -f1) MB"
fi
echo "$root"
