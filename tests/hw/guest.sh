#!/usr/bin/env bash
# Runs inside the hardware-lab VM (started by tests/hw/run): load the real
# drivers, run the hardware tests, leave pytest's results, the kernel log and
# the exit status in the shared results directory.
#   guest.sh OUT_DIR [pytest args...]
set -uo pipefail
out=$1
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

# vivid: one instance, only its video capture node (/dev/video0), one webcam
# input. vfb: room for 1024x768 at 32 bpp. snd-aloop: card "Loopback".
modprobe vivid n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0 \
    && modprobe vfb vfb_enable=1 videomemorysize=4194304 mode_option=640x480-32@60 \
    && modprobe snd-aloop index=0 id=Loopback pcm_substreams=4
loaded=$?
ls -l /dev/video* /dev/fb* /dev/snd/ >"$out/devices.txt" 2>&1

rc=3
if [ "$loaded" = 0 ]; then
    export PI2PI_HW_VM=1 PI2PI_HW_OUT=$out HOME=/root PYTHONDONTWRITEBYTECODE=1
    .venv/bin/python -m pytest tests/hw -p no:cacheprovider -v -rA \
        --junitxml="$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log"
    rc=${PIPESTATUS[0]}
else
    echo "guest: loading the drivers failed" | tee "$out/pytest.log"
fi
dmesg >"$out/dmesg.txt" 2>&1
echo "$rc" >"$out/status"
exit "$rc"
