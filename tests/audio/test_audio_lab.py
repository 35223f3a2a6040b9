"""talk over a real long link in the lab: natpi's talk to a listen on its ISP
router, with 300 ms added to what leaves natpi (a 300 ms round trip).

On such a link a healthy connection holds 300 ms of audio in flight. talk
bounds its latency by what *waits* to leave (SIOCOUTQNSD); measuring what is
merely unacknowledged (SIOCOUTQ, as it did) counted the flight and dropped
audio on every long link. A link slower than the audio must still drop.
"""
from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path
from typing import Dict, Tuple

from tests.calls.sides import wait_for
from tests.lab.lab import ADDR, Lab
from tests.lab.test_topology import connect_ms

PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
ISP = ADDR["isp_lan"]
PORT = 21350
SECONDS = 6


def talk_to_isp(lab: Lab, name: str) -> Tuple[Dict, Dict]:
    """talk (natpi, the test signal) -> listen (isp) for SECONDS; both programs' stats."""
    stats = f"/root/{name}"
    listen = lab.popen("isp", f"exec {PYTHON} -m pi2pi listen --listen {ISP}:{PORT} --device null --pace clock "
                              f"--buffer 60 --stats {stats} --duration 60 --config /dev/null",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{PORT}" in lab.run("isp", "ss -Hltn").stdout, 30, "listen on isp")
        lab.run("natpi", f"{PYTHON} -m pi2pi talk --connect {ISP}:{PORT} --device testsignal --bitrate 32000 "
                         f"--duration {SECONDS} --stats {stats} --config /dev/null", timeout=SECONDS + 60)
        wait_for(lambda: "ESTAB" not in lab.run("isp", f"ss -Htn '( sport = :{PORT} )'").stdout or None, 15,
                 "listen to read the last of talk's audio")
    finally:
        listen.terminate()
        listen.wait(30)
    # (nsenter ends at once; listen itself writes its stats as it ends)
    wait_for(lambda: lab.host_path("isp", f"{stats}/listen.json").exists(), 15, "listen's stats")
    read = lambda host: json.loads(lab.host_path(host, f"{stats}/{'talk' if host == 'natpi' else 'listen'}.json")
                                   .read_text())
    return read("natpi"), read("isp")


def test_a_300_ms_round_trip_drops_no_audio_and_a_slow_link_still_does(lab: Lab) -> None:
    lab.netem("natpi", "delay 300ms")
    try:
        rtt = connect_ms(lab, "natpi", ADDR["gw_public"], ADDR["gw_ssh_port"], 3)   # a TCP handshake: one round trip
        talk, listen = talk_to_isp(lab, "long")
    finally:
        lab.netem("natpi", None)
    assert all(r is not None for r in rtt) and statistics.median(rtt) >= 295, rtt
    assert talk["packets"] >= SECONDS * 50 * 0.9, talk
    assert talk["dropped"] == 0, f"talk dropped audio on a healthy 300 ms link: {talk}"
    assert listen["packets"] == talk["packets"], (talk, listen)
    assert talk["buffer_ms"]["max"] < 100, talk   # what waited to leave, not what was in flight

    # Positive control: a link slower than the audio (16 kbit/s for 32 kbit/s) makes talk drop.
    lab.netem("natpi", "rate 16kbit")
    try:
        talk, listen = talk_to_isp(lab, "slow")
    finally:
        lab.netem("natpi", None)
    assert talk["dropped"] > 0 and listen["packets"] == talk["packets"], (talk, listen)
    assert talk["buffer_ms"]["max"] >= 200, talk
