"""Faults in the middle of a call, in the lab, as a user would meet them:
natpi's uplink cut for 10 s, one Pi's programs killed, natpi's public address
changed, a lossy and delayed link. Each test places its own call with `fab
call` and judges by what a user sees: the far picture on each screen (read back
from the framebuffer), the far voice in each recording, `fab status` and `fab
stats`.
"""
from __future__ import annotations

import time
from typing import Dict, Iterator, List

import pytest

from pi2pi.audio.jitter import FLOOD_MARGIN_MS
from pi2pi.audio.settings import ListenSettings
from tests.calls.handover import SharedSite
from tests.calls.lab_call import (PORTS, directions, fab, far_picture_moves, heard, live, picture_moves, placed_call,
                                  provision, screen_label, shows, site_status)
from tests.calls.sides import wait_for
from tests.lab.lab import ADDR, Lab
from tests.provision.helpers import playbook_command

UPLINK_CUT_S = 10        # the outage
BACK_WITHIN_S = 15       # media again this soon after the link returns, without a new fab call
NOTICED_WITHIN_S = 10    # "within a few seconds": fab status says a killed side's media stopped
SIDES = {"natpi": "gwpi", "gwpi": "natpi"}   # each host and the far side whose picture it shows
LISTEN = ListenSettings()                    # the Pis' listen runs with its defaults but the floor
NATPI_ADDRESS_FACT = "/etc/ansible/facts.d/pi2pi_natpi.fact"   # natpi_address.yml's record on gw


@pytest.fixture(scope="module")
def site(shared_site: SharedSite) -> Iterator[Lab]:
    # The package's lab, provisioned for direct (tests/calls/conftest.py). The last test
    # provisions tunnel, and the next module re-provisions what it needs.
    lab = shared_site.ready("direct")
    yield lab
    # The address test moved natpi, and natpi_address.yml the DNAT after it (the later
    # tests run so, as they did in a lab of their own). For the next module: natpi back at
    # its own address and the gateway's record of the moved one gone, as in a fresh lab;
    # the next module's site.yml (needed anyway: the tunnel test changed the transport)
    # renders the DNAT for natpi's own address again (SharedSite.ready checks it does).
    if lab.natpi_public != ADDR["natpi_public"]:
        lab.set_natpi_public(ADDR["natpi_public"])
        lab.run("gw", f"rm -f {NATPI_ADDRESS_FACT}")


def hang_up(lab: Lab) -> None:
    result = fab(lab, "hangup")
    assert result.returncode == 0, shows(result)


def pictures_move(lab: Lab) -> None:
    for host, far in SIDES.items():
        far_picture_moves(lab, host, far)


def test_killed_programs_on_one_pi_are_noticed_and_a_new_call_recovers(site: Lab) -> None:
    lab = site
    placed_call(lab)
    pictures_move(lab)
    lab.run("gwpi", "pkill -KILL -f 'pi2pi (camera|viewer|talk|listen)'")
    killed_at = time.monotonic()

    def all_down() -> Dict[str, dict]:
        media = site_status(lab)["media"]
        return media if len(media) == 4 and not any(d["up"] for d in media.values()) else {}

    media = wait_for(all_down, NOTICED_WITHIN_S, "fab status to show every direction down", step_s=0.5)
    print(f"fab status showed the killed side {time.monotonic() - killed_at:.1f} s after the kill")
    assert "gwpi's camera ended: killed by SIGKILL" in media["video gwpi -> natpi"]["why"], media
    # The other side noticed by itself: its programs went back to dialing.
    assert any(w.startswith("natpi's viewer is dialing") for w in media["video gwpi -> natpi"]["why"]), media
    text = fab(lab, "status")
    assert "video natpi -> gwpi: DOWN: " in text.stdout and "gwpi's viewer ended: killed by SIGKILL" in text.stdout, \
        shows(text)

    hung = fab(lab, "hangup")
    assert hung.returncode == 0 and "natpi: ended by hangup" in hung.stdout, shows(hung)
    # The killed programs could write nothing: the hang-up says so rather than guess.
    assert "gwpi: ended by hangup; missing:" in hung.stdout, shows(hung)
    again = placed_call(lab)
    pictures_move(lab)
    assert all(d["up"] for d in site_status(lab)["media"].values())
    hang_up(lab)
    stats = directions(lab, again)
    assert all(d["missing"] == [] and d["received"] for d in stats.values()), stats


def test_an_address_change_mid_call_is_named_and_the_address_step_recovers(site: Lab) -> None:
    lab = site
    placed_call(lab, "--video-only")
    pictures_move(lab)
    new_address = "198.51.100.31"
    lab.set_natpi_public(new_address)
    drifted = wait_for(lambda: (lambda a: a if a.get("in_step") is False else None)(site_status(lab)["address"]),
                       30, "fab status to see natpi's new address", step_s=0.5)
    assert drifted["natpi_seen_as"] == new_address, drifted
    text = fab(lab, "status")
    assert f"natpi's public address {new_address}" in text.stdout and \
        "DRIFTED: run ansible-playbook playbooks/natpi_address.yml" in text.stdout, shows(text)

    followed = lab.run("natpi", playbook_command("playbooks/natpi_address.yml"), user="pi", check=False, timeout=300)
    assert followed.returncode == 0, shows(followed)
    assert site_status(lab)["address"]["in_step"] is True
    hang_up(lab)
    call = placed_call(lab, "--video-only")
    pictures_move(lab)
    hang_up(lab)
    assert all(d["received"] for d in directions(lab, call).values())


def shown_numbers(lab: Lab, looks: int, timeout_s: float = 60) -> Dict[str, List[int]]:
    """Each screen's far frame number, read every 0.2 s or so until each screen has given
    `looks` readings (a count of looks, not of seconds: a loaded machine reads slower)."""
    seen: Dict[str, List[int]] = {host: [] for host in SIDES}
    deadline = time.monotonic() + timeout_s
    while min(len(numbers) for numbers in seen.values()) < looks and time.monotonic() < deadline:
        for host, far in SIDES.items():
            name, number = screen_label(lab, host)
            if name == far.upper():
                seen[host].append(number)
        time.sleep(0.2)
    return seen


def test_a_lossy_delayed_link_keeps_video_latency_bounded_and_audio_concealed(site: Lab) -> None:
    lab = site
    impairment = "delay 80ms 20ms loss 1%"
    for host in ("natpi", "gwpi"):     # each Pi's uplink: every packet crosses one impairment
        lab.netem(host, impairment)
    try:
        call = placed_call(lab)
        pictures_move(lab)
        seen = shown_numbers(lab, 40)
        hang_up(lab)
    finally:
        for host in ("natpi", "gwpi"):
            lab.netem(host, None)
    stats = directions(lab, call)
    report = {n: (d["fps"], d["latency_ms"], d["buffer_ms"], d["underruns"], d["concealed"]) for n, d in stats.items()}
    print(f"{impairment}: {report}; frame numbers seen: { {h: (s[0], s[-1], len(set(s))) for h, s in seen.items()} }")
    for host, numbers in seen.items():
        # The picture keeps moving (almost every look, a few times a second, finds a
        # newer frame than the last look) and never goes back (newest frame wins).
        newer = sum(b > a for a, b in zip(numbers, numbers[1:]))
        assert len(numbers) >= 40 and newer >= 0.8 * (len(numbers) - 1), (host, numbers)
        assert numbers == sorted(numbers), (host, numbers)
    for name in ("video_natpi_to_gwpi", "video_gwpi_to_natpi"):
        latency = stats[name]["latency_ms"]
        # Bounded: one way 80±20 ms, a lost segment's retransmission (TCP's 200 ms
        # minimum timeout plus a round trip), a frame interval; never a growing queue.
        assert latency["p99"] < 800, (name, latency)
        assert stats[name]["fps"] >= 5, (name, stats[name]["fps"])   # the cameras send 10
    for name, host in (("audio_natpi_to_gwpi", "gwpi"), ("audio_gwpi_to_natpi", "natpi")):
        d = stats[name]
        # Underruns are counted, and each is concealed (Opus's concealment, not silence).
        assert isinstance(d["underruns"], int) and d["concealed"] >= d["underruns"], d
        # The buffer holds on average no more than its configured maximum; a burst after a
        # lost segment's retransmission may pass it for a moment, never the queue's hard bound.
        assert d["buffer_ms"]["mean"] <= LISTEN.buffer_max, d
        assert d["buffer_ms"]["max"] <= LISTEN.buffer_max + FLOOD_MARGIN_MS, d
        # The far voice is still there to be recognised, from the sound alone.
        assert heard(lab, call, host) == SIDES[host].upper()


def media_returns_after_uplink_cut(lab: Lab, transport: str) -> None:
    call = placed_call(lab)
    pictures_move(lab)
    lab.set_link("natpi", False)
    try:
        time.sleep(UPLINK_CUT_S)    # the fault lasts this long: it is the test's input, not a wait
    finally:
        lab.set_link("natpi", True)
    back_at = time.monotonic()
    shown = {host: screen_label(lab, host)[1] for host in SIDES}
    heard_packets = {host: int(live(lab, host, call, "listen").get("packets", 0)) for host in SIDES}

    # A new picture, then one 5 frames on. While the link comes back the camera may still
    # send a smaller picture (it followed the cut link down): picture_moves waits that out.
    for host, far in SIDES.items():
        picture_moves(lambda: screen_label(lab, host), far, f"{host}'s screen", BACK_WITHIN_S,
                      after=shown[host], rise=5)
        wait_for(lambda: int(live(lab, host, call, "listen").get("packets", 0)) > heard_packets[host] + 50,
                 BACK_WITHIN_S, f"{host}'s listen to receive again")
    took = time.monotonic() - back_at
    print(f"{transport}: media both ways again {took:.1f} s after the uplink returned")
    assert took <= BACK_WITHIN_S, took
    # Talk a while on the mended link, then judge the sound recorded after it.
    wait_for(lambda: all(int(live(lab, h, call, "listen").get("packets", 0)) > heard_packets[h] + 250 for h in SIDES),
             30, "5 s of sound after the link returned")
    hang_up(lab)
    for host in SIDES:
        assert heard(lab, call, host, last_s=4) == SIDES[host].upper(), host
    stats = directions(lab, call)
    for name, d in stats.items():
        assert (d["reconnects"]["sender"] or 0) + (d["reconnects"]["receiver"] or 0) >= 1, (name, d["reconnects"])


def test_media_returns_after_natpi_uplink_cut_direct(site: Lab) -> None:
    media_returns_after_uplink_cut(site, "direct")


def test_media_returns_after_natpi_uplink_cut_tunnel(site: Lab) -> None:
    provision(site, "tunnel")
    media_returns_after_uplink_cut(site, "tunnel")
    assert set(PORTS) == set(directions(site))
