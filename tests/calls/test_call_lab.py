"""A whole call in the lab, from natpi, as the seed's user would run it:
site.yml, `fab call`, media for a while, `fab hangup`, `fab stats`, for each
transport (direct through the gateway's DNAT, then tunnel inside natpi's ssh).

The evidence is what the programs do not report about themselves: each
viewer's framebuffer shows the *other* host's name with rising frame numbers
(read back from the pixels), each listen recording holds the *other* side's
test signal (decoded from the sound), the gateway's counters rose on the DNAT
rules (direct) or on the tunnel's ssh port alone (tunnel), and a neighbour
behind natpi's own NAT, whom the gateway lets through, gets no media.
"""
from __future__ import annotations

import json
import re
import subprocess
from typing import Dict, Iterator, Tuple

import pytest

from tests.calls.handover import SharedSite
from tests.calls.lab_call import (GW, PORTS, STORE, directions, fab, far_picture_moves, heard,
                                  last_call, provision, shows)
from tests.calls.sides import wait_for
from tests.lab.lab import Lab


def dnat_counters(lab: Lab) -> Dict[str, Tuple[int, int]]:
    """(packets, bytes) of each pi2pi rule on gw, keyed by its comment and chain."""
    found = {}
    for line in lab.run("gw", "iptables-save -c").stdout.splitlines():
        match = re.match(r"^\[(\d+):(\d+)\] -A (PI2PI-\w+) .*--comment (pi2pi-[\w-]+)", line)
        if match:
            found[f"{match[3]} {match[4]}"] = (int(match[1]), int(match[2]))
    return found


def neighbour_tries(lab: Lab, port: int, seconds: float = 4) -> Dict[str, object]:
    """From neighbour (natpi's public address, so the gateway lets it through), dial a
    media port without the call's token; what it got."""
    probe = f"""
import json, socket
out = {{"connected": False, "bytes": 0, "closed": False, "first": ""}}
try:
    s = socket.create_connection(("{GW}", {port}), timeout={seconds})
    out["connected"] = True
    s.settimeout({seconds})
    data = b""
    try:
        while len(data) < 1 << 16:
            chunk = s.recv(4096)
            if not chunk:
                out["closed"] = True
                break
            data += chunk
            if len(data) >= 21:   # a challenge: answer it with a guess
                s.sendall(b"P2PR" + bytes(48))   # a whole (wrong) answer: refused at once
    except socket.timeout:
        pass
    out["bytes"], out["first"] = len(data), data[:4].decode("latin-1")
except OSError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""
    result = lab.run("neighbour", ["python3", "-c", probe], timeout=seconds * 3 + 10)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def site(shared_site: SharedSite) -> Iterator[Lab]:
    # The package's lab, provisioned for direct (tests/calls/conftest.py); the tunnel test
    # below provisions tunnel, which the later tests use, and the next module re-provisions.
    yield shared_site.ready("direct")


def check_call_evidence(lab: Lab, call: str, seconds: float) -> None:
    stats = directions(lab)
    assert set(stats) == set(PORTS), stats
    for name, d in stats.items():
        # Both ends agree: what was sent was received (the hang-up stops senders first).
        assert d["sent"] and d["sent"] > 0, (name, d)
        assert d["in_flight"] == 0 and d["sent"] == d["received"], (name, d)
        assert d["missing"] == [], (name, d)
        assert d["ended"] == {"sender": "signal SIGTERM", "receiver": "signal SIGTERM"}, (name, d)
    # Each side heard the other's voice, not its own.
    assert heard(lab, call, "natpi") == "GWPI"
    assert heard(lab, call, "gwpi") == "NATPI"


def test_a_direct_call_end_to_end(site: Lab) -> None:
    lab = site
    before = dnat_counters(lab)
    placed = fab(lab, "call")
    assert placed.returncode == 0, shows(placed)
    # It says what it waits for, and returns once media arrived on both sides.
    for line in ("gwpi: video arrives (first frame shown)", "natpi: video arrives (first frame shown)",
                 "gwpi: audio arrives (first packets in)", "natpi: audio arrives (first packets in)",
                 " is up: video and audio both ways"):
        assert line in placed.stdout, shows(placed)
    call = re.search(r"call (\S+) is up", placed.stdout)[1]
    for host, far in (("natpi", "gwpi"), ("gwpi", "natpi")):
        far_picture_moves(lab, host, far)
    # A neighbour behind natpi's NAT reaches gwpi's listeners (the gateway lets its
    # address in) but gets no media and no foothold; the call goes on.
    for port in (PORTS["video_natpi_to_gwpi"], PORTS["audio_natpi_to_gwpi"], PORTS["video_gwpi_to_natpi"]):
        tried = neighbour_tries(lab, port)
        assert tried["connected"], f"port {port}: the gateway should let the neighbour through: {tried}"
        assert tried["closed"] and tried["first"] in ("", "P2PC") and tried["bytes"] <= 21, (port, tried)
    far_picture_moves(lab, "gwpi", "natpi")
    far_picture_moves(lab, "natpi", "gwpi")
    status = fab(lab, "status")
    assert status.returncode == 0 and "in step" in status.stdout, shows(status)
    for direction in ("video natpi -> gwpi", "video gwpi -> natpi", "audio natpi -> gwpi", "audio gwpi -> natpi"):
        assert f"{direction}: up" in status.stdout, shows(status)
    # fab watch: a table each second, with rates in every one from the third on (the
    # second may look before any program wrote a new snapshot: they do once a second,
    # give or take a tenth); the lab's cameras send 15 fps.
    watched = fab(lab, "watch", "--seconds", "4.5")
    assert watched.returncode == 0, shows(watched)
    tables = [block.splitlines() for block in watched.stdout.strip().split("\n\n")]
    assert len(tables) >= 3, watched.stdout
    assert all(len(t) > 2 and t[2].split()[4] != "-" for t in tables[2:]), watched.stdout
    rows = {" ".join(line.split()[:4]): line.split()[4:] for line in tables[-1][2:]}
    assert set(rows) == {"video natpi -> gwpi", "video gwpi -> natpi", "audio natpi -> gwpi",
                         "audio gwpi -> natpi"}, watched.stdout
    for direction in ("video natpi -> gwpi", "video gwpi -> natpi"):
        fps, kbps, latency = (float(v) for v in rows[direction][:3])
        assert 8 <= fps <= 20 and kbps > 50 and 0 < latency < 500, (direction, rows[direction])
    for direction in ("audio natpi -> gwpi", "audio gwpi -> natpi"):
        assert rows[direction][0] == "-" and 10 < float(rows[direction][1]) < 60, (direction, rows[direction])

    hung = fab(lab, "hangup")
    assert hung.returncode == 0 and f"call {call} ended" in hung.stdout, shows(hung)
    assert "all stats fetched" in hung.stdout
    table = fab(lab, "stats")
    assert table.returncode == 0 and f"call {call}" in table.stdout, shows(table)
    assert "video natpi -> gwpi" in table.stdout and "audio gwpi -> natpi" in table.stdout
    check_call_evidence(lab, call, 3)
    after = dnat_counters(lab)
    for flow in PORTS:
        rule = f"PI2PI-PREROUTING pi2pi-{flow.replace('_', '-')}"
        assert after[rule][0] > before.get(rule, (0, 0))[0], f"no packets DNATed for {flow}"
    # The neighbour's attempts were DNATed too: the listeners counted them, unproven or refused.
    figures = directions(lab)
    refused = sum(d["refused"]["receiver"] or 0 for n, d in figures.items() if n.endswith("to_gwpi")) \
        + (figures["video_gwpi_to_natpi"]["refused"]["sender"] or 0)
    assert refused >= 3, figures


def test_a_second_call_is_refused_and_hangup_twice_is_harmless(site: Lab) -> None:
    lab = site
    assert fab(lab, "call", "--audio-only").returncode == 0
    again = fab(lab, "call")
    assert again.returncode == 1 and "a call is already up on" in again.stderr, shows(again)
    assert "Traceback" not in again.stderr
    assert fab(lab, "hangup").returncode == 0
    twice = fab(lab, "hangup")
    assert twice.returncode == 0 and "no call is up" in twice.stdout, shows(twice)
    audio = directions(lab)
    assert set(audio) == {"audio_natpi_to_gwpi", "audio_gwpi_to_natpi"}


def test_a_killed_supervisor_on_gwpi_still_hangs_up_cleanly(site: Lab) -> None:
    lab = site
    assert fab(lab, "call", "--video-only", "--size", "160x120", "--fps", "10").returncode == 0
    lab.run("gwpi", "kill -9 $(python3 -c 'import json; print(json.load(open(\"/var/lib/pi2pi/calls/current.json\"))[\"pid\"])')",
            user="pi")
    wait_for(lambda: lab.run("gwpi", "pgrep -f 'pi2pi (camera|viewer)'", check=False).returncode != 0, 15,
             "gwpi's programs to end with their supervisor")
    hung = fab(lab, "hangup")
    assert hung.returncode == 0, shows(hung)
    assert "gwpi: ended by the supervisor died" in hung.stdout and "natpi: ended by hangup" in hung.stdout, hung.stdout
    assert lab.run("natpi", "pgrep -f 'pi2pi (camera|viewer)'", check=False).returncode != 0
    # The programs killed with it still wrote their stats; the next call works.
    video = directions(lab)
    assert all(d["missing"] == [] for d in video.values()), video
    camera = json.loads(lab.host_path("natpi", f"{STORE}/{last_call(lab)}/natpi/camera.json").read_text())
    assert camera["size"] == "160x120" and 0 < video["video_natpi_to_gwpi"]["fps"] <= 11, camera   # not 15
    assert fab(lab, "call", "--video-only").returncode == 0
    assert fab(lab, "hangup").returncode == 0


def test_a_taken_port_and_a_drifted_address_are_named_and_nothing_is_left(site: Lab) -> None:
    lab = site
    squatter = lab.popen("gwpi", f"exec socat TCP-LISTEN:{PORTS['video_gwpi_to_natpi']},reuseaddr -",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "5000" in lab.run("gwpi", "ss -Hltn").stdout, 10, "the squatter to listen")
        taken = fab(lab, "call")
    finally:
        squatter.kill()
        squatter.wait()
    assert taken.returncode == 1, shows(taken)
    assert "gwpi: camera could not start: cannot listen on 0.0.0.0:5000: Address already in use" in taken.stderr
    for host in ("natpi", "gwpi"):
        assert "no call is up" in lab.run(host, "pi2pi status", user="pi").stdout
        assert lab.run(host, "pgrep -f 'pi2pi (camera|viewer|talk|listen)'", check=False).returncode != 0

    original = lab.natpi_public
    lab.set_natpi_public("198.51.100.31")
    try:
        drifted = fab(lab, "call")
    finally:
        lab.set_natpi_public(original)
    assert drifted.returncode == 1 and "drifted" in drifted.stderr and "198.51.100.31" in drifted.stderr, shows(drifted)
    assert "natpi_address.yml" in drifted.stderr
    assert "no call is up" in lab.run("gwpi", "pi2pi status", user="pi").stdout


def test_a_tunnel_call_end_to_end(site: Lab) -> None:
    lab = site
    provision(lab, "tunnel")
    # The gateway DNATs only the tunnel's ssh port now.
    rules = [line for line in lab.run("gw", "iptables-save -t nat").stdout.splitlines()
             if line.startswith("-A PI2PI-PREROUTING")]
    assert len(rules) == 1 and "pi2pi-tunnel-ssh" in rules[0], rules
    before = dnat_counters(lab)
    placed = fab(lab, "call")
    assert placed.returncode == 0 and "(tunnel transport)" in placed.stdout, shows(placed)
    call = re.search(r"call (\S+) is up", placed.stdout)[1]
    for host, far in (("natpi", "gwpi"), ("gwpi", "natpi")):
        far_picture_moves(lab, host, far)
    # Nothing but the tunnel reaches gwpi's listeners now: the neighbour's dial goes nowhere.
    tried = neighbour_tries(lab, PORTS["video_natpi_to_gwpi"], seconds=3)
    assert not tried["connected"], tried
    hung = fab(lab, "hangup")
    assert hung.returncode == 0, shows(hung)
    check_call_evidence(lab, call, 3)
    after = dnat_counters(lab)
    tunnel = "PI2PI-FORWARD pi2pi-tunnel-ssh"
    carried = after[tunnel][1] - before.get(tunnel, (0, 0))[1]
    media = sum(d["bytes"] for d in directions(lab).values() if d["sender"].startswith("natpi"))
    # The firewall counted, on the tunnel's ssh port, at least the media bytes gwpi's
    # programs read (plus ssh's framing and the acks of the other way).
    assert carried > media > 0, (carried, media)


def test_a_two_minute_call_grows_nothing(site: Lab) -> None:
    """The short version of `make soak` (tests/soak.py has the bounds and why)."""
    from tests import soak
    report = soak.soak(site, 2.0)
    print(json.dumps(report["programs"], sort_keys=True))
    assert report["ok"], report["problems"]


def test_a_call_is_listed_and_drawn_afterwards_from_both_pis_history(site: Lab) -> None:
    """Each Pi keeps a line of history a second in its call directory; `fab hangup`
    fetches it with the stats; `fab stats --plot` on natpi draws the call from it, and
    what it draws is the call's own figures (the fps `fab stats` counted)."""
    import statistics

    from PIL import Image

    from controller import plot
    from tests.calls.lab_call import CALLS, placed_call

    lab = site
    call = placed_call(lab)
    natpi_history = lab.host_path("natpi", f"{CALLS}/{call}/history.jsonl")

    def lines_on_natpi() -> int:
        try:
            return natpi_history.read_text().count("\n")
        except FileNotFoundError:
            return 0

    wait_for(lambda: lines_on_natpi() >= 8, 30, "8 lines of history on natpi")
    hung = fab(lab, "hangup")
    assert hung.returncode == 0 and "all stats fetched" in hung.stdout, shows(hung)

    png = "/tmp/pi2pi-call-plot.png"
    drawn = fab(lab, "stats", "--plot", png)
    assert drawn.returncode == 0 and f"call {call}: " in drawn.stdout, shows(drawn)
    assert "Traceback" not in drawn.stderr
    with Image.open(lab.host_path("natpi", png)) as image:
        assert image.format == "PNG" and image.size == plot.SIZE_PX, (image.format, image.size)
        image.verify()

    # The same extraction over the fetched files: both sides' history arrived, a point
    # a second, and the count fab printed is the count drawn.
    fetched = {side: lab.host_path("natpi", f"{STORE}/{call}/{side}/history.jsonl") for side in ("natpi", "gwpi")}
    assert all(path.is_file() for path in fetched.values()), fetched
    data = plot.series({side: plot.read_history(path) for side, path in fetched.items()})
    assert data["lines"]["natpi"] >= 8 and data["lines"]["gwpi"] >= 8, data["lines"]
    points = len(data["t"])
    assert max(data["lines"].values()) <= points <= sum(data["lines"].values()), (points, data["lines"])
    assert f"({points} points;" in drawn.stdout, (points, drawn.stdout)
    # As many seconds as lines (gwpi's side comes up, and its history starts, a little earlier).
    assert 0.9 * (max(data["lines"].values()) - 1) <= data["t"][-1] <= max(data["lines"].values()) + 3, data["t"]
    stats = directions(lab, call)
    assert set(data["kbps"]) == {"video natpi -> gwpi", "video gwpi -> natpi", "audio natpi -> gwpi",
                                 "audio gwpi -> natpi"}, data["kbps"].keys()
    for direction, name in (("video natpi -> gwpi", "video_natpi_to_gwpi"), ("video gwpi -> natpi", "video_gwpi_to_natpi")):
        counted = stats[name]["fps"]   # over the whole call, from the viewer's own stats
        per_second = [v for v in data["fps"][direction] if v is not None]
        # Each second's rate is near the call's; the first second and those after the
        # senders stopped (0) are lower, so the median of those with frames and the max.
        assert statistics.median(v for v in per_second if v > 0) == pytest.approx(counted, rel=0.25), \
            (direction, counted, per_second)
        assert 0.75 * counted <= max(per_second) <= 1.4 * counted + 1, (direction, counted, per_second)
        latencies = [v for v in data["latency_ms"][direction] if v is not None]
        assert latencies and all(0 <= v < 1000 for v in latencies), (direction, latencies)
    for direction in ("audio natpi -> gwpi", "audio gwpi -> natpi"):
        assert any(v for v in data["buffer_ms"][direction] if v is not None), (direction, data["buffer_ms"])
        assert max(v for v in data["kbps"][direction] if v is not None) > 10, (direction, data["kbps"][direction])

    listed = fab(lab, "stats", "--list")
    assert listed.returncode == 0, shows(listed)
    last = listed.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{call} ") and "both sides" in last and last.split()[-1] == "both", listed.stdout
