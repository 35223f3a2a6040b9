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
# What is done under emulation is what costs: no documentation, manual pages
# or translations to unpack (nothing reads them), no recommends (mmdebstrap's
# default), and /usr merged by mmdebstrap's hook where the suite has
# usr-is-merged (bookworm): else init-system-helpers pulls in usrmerge, and
# with it perl and a conversion run by the emulated perl.
options=(--variant=apt --arch="$arch" --include="${packages%,}"
         --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr
         --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
         --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
         --aptopt='Acquire::Retries "3"')
# A runtime root never speaks TLS (the Pi installs offline), yet python3-venv
# pulls in ca-certificates, whose postinst spends minutes emulated on ~140
# certificates: without their files it has none to link. The controller's
# root keeps them (its set-up reaches PyPI).
if [ "$kind" = runtime ]; then
    options+=(--dpkgopt='path-exclude=/usr/share/ca-certificates/*')
fi
# Debian's registry: the suite and its updates, and its security updates where
# they are still served for this arch (bullseye's armhf ones are not: 404).
mirror=http://deb.debian.org
sources=("deb $mirror/debian $suite main" "deb $mirror/debian $suite-updates main")
if curl -fsI -m 30 "$mirror/debian-security/dists/$suite-security/main/binary-$arch/Packages.xz" >/dev/null; then
    sources+=("deb $mirror/debian-security $suite-security main")
else
    log "$suite-security is not served for $arch: the root has $suite and $suite-updates only"
fi
key=$(printf '%s\n' "$suite" "${options[@]}" "${sources[@]}" | sha256sum | cut -c1-16)
name=$suite-$arch-$kind
root=$cache/$name-$key
mkdir -p "$cache"
exec 8>"$cache/$name.lock"
flock 8
if [ ! -e "$root/.pi2pi-root" ]; then
    start=$(date +%s)
    log "building $name in $root (mmdebstrap, emulated: minutes)"
    rm -rf --one-file-system "$root.new"
    mmdebstrap --quiet "${options[@]}" "$suite" "$root.new" "${sources[@]}" >&2
    echo "$name $(date -u +%FT%TZ)" > "$root.new/.pi2pi-root"
    mv "$root.new" "$root"
    for old in "$cache/$name-"*/; do   # the roots of older keys
        [ "${old%/}" = "$root" ] || rm -rf --one-file-system "${old%/}"
    done
    log "built $name in $(( $(date +%s) - start )) s, $(du -sm "$root" | cut -f1) MB"
fi
echo "$root"
