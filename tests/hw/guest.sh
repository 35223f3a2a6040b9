#!/usr/bin/env bash
# Runs inside the hardware-lab VM (started by tests/hw/run): run the hardware
# tests (their session fixture loads the drivers), leave pytest's results, the
# kernel log and the exit status in the shared results directory.
#   guest.sh OUT_DIR [pytest args...]
set -uo pipefail
out=$1
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "guest: tests start at $(uptime_s) s of uptime"
export PI2PI_HW_VM=1 PI2PI_HW_OUT=$out HOME=/root
.venv/bin/python -m pytest tests/hw -p no:cacheprovider -v -rA --durations=0 \
    --junitxml="$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
echo "guest: tests end at $(uptime_s) s of uptime"
dmesg >"$out/dmesg.txt" 2>&1
echo "$rc" >"$out/status"
exit "$rc"
