#!/usr/bin/env bash
# Runs inside the hardware-lab VM (started by tests/hw/run): run the hardware
# tests (their session fixture loads the drivers), leave pytest's results, the
# kernel log and the exit status in the shared results directory.
#   guest.sh OUT_DIR [pytest args...]
set -uo pipefail
out=$1
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# virtme-ng shares the host's root over 9p without caching: every file
# lookup is a round trip through the emulated machine, and Python programs
# (pytest, ansible, pi2pi) spend most of their start-up there. tests/hw/run
# adds a second share of the same root (tag "hostcache"); mounted with
# cache=loose it is served from the guest's page cache after the first read.
# The tests run chrooted in it, with writable layers where they write.
if [ "${PI2PI_HW_CACHED:-}" != 1 ]; then
    root=/tmp/hwlab-root
    layers=/tmp/hwlab-layers
    mkdir -p "$root" "$layers"
    if mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=524288 hostcache "$root"; then
        mount -t tmpfs tmpfs "$layers"
        for dir in etc root var; do
            mkdir -p "$layers/$dir/upper" "$layers/$dir/work"
            mount -t overlay overlay \
                -o "lowerdir=$root/$dir,upperdir=$layers/$dir/upper,workdir=$layers/$dir/work" "$root/$dir"
        done
        for dir in proc sys dev run; do
            mount --rbind "/$dir" "$root/$dir"
        done
        # The chroot gets a clean /tmp; a repository (or results dir) that lies
        # under /tmp, as a CI clone may, is held open and bound back into it.
        exec 9<"$root$repo"
        mount -t tmpfs tmpfs "$root/tmp"
        if [ ! -d "$root$repo" ]; then
            mkdir -p "$root$repo" && mount --no-canonicalize --bind /proc/self/fd/9 "$root$repo"
        fi
        exec 9<&-
        [ -d "$root$out" ] || mkdir -p "$root$out"
        mount --bind "$out" "$root$out"
        echo "guest: running in the cached root at $(uptime_s) s of uptime"
        exec chroot "$root" /usr/bin/env PI2PI_HW_CACHED=1 "$repo/tests/hw/guest.sh" "$out" "$@"
    fi
    echo "guest: no cached root share; running on the uncached root (slower)"
fi

cd "$repo"
echo "guest: tests start at $(uptime_s) s of uptime"
export PI2PI_HW_VM=1 PI2PI_HW_OUT=$out HOME=/root
.venv/bin/python -m pytest tests/hw -p no:cacheprovider -v -rA --durations=0 \
    --junitxml="$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
echo "guest: tests end at $(uptime_s) s of uptime"
dmesg >"$out/dmesg.txt" 2>&1
echo "$rc" >"$out/status"
exit "$rc"
