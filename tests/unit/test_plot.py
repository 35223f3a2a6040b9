"""`fab stats --list` and `fab stats --plot` without hosts: a made-up store and a
made-up two-side history whose counters give known figures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from invoke.exceptions import Exit
from PIL import Image

from controller import plot, report, store

VIDEO_OUT, VIDEO_BACK = "video natpi -> gwpi", "video gwpi -> natpi"
AUDIO_OUT, AUDIO_BACK = "audio natpi -> gwpi", "audio gwpi -> natpi"
# What each side's receivers get each second: natpi's from gwpi, gwpi's from natpi.
RECEIVES = {  # side: (frames/s, bytes a frame, packets/s, bytes a packet, latency base ms, fill base ms)
    "natpi": (10, 4000, 50, 40, 30.0, 80.0),
    "gwpi": (15, 5000, 50, 60, 40.0, 60.0),
}
SECONDS = 10


def line(side: str, i: int, at: float, media: str = "both") -> dict:
    """Side's history line of second i: counters that rise steadily from 0."""
    fps, frame_bytes, pps, packet_bytes, latency, fill = RECEIVES[side]
    programs = {}
    if media in ("both", "video"):
        programs["camera"] = {"at": at - 0.2, "frames": 12 * i, "dropped": 1, "reconnects": 0}
        programs["viewer"] = {"at": at - 0.1, "frames": fps * i, "received": fps * i, "bytes": fps * i * frame_bytes,
                              "latency_ms": latency + i, "dropped": 0, "reconnects": 0}
    if media in ("both", "audio"):
        programs["talk"] = {"at": at - 0.2, "packets": 50 * i, "bytes": 50 * i * 50, "dropped": 0}
        programs["listen"] = {"at": at - 0.1, "packets": pps * i, "bytes": pps * i * packet_bytes,
                              "fill_ms": fill + i, "underruns": 0}
    return {"at": at, "programs": programs}


def two_sides(seconds: int = SECONDS, media: str = "both") -> Dict[str, List[dict]]:
    """natpi's lines on whole seconds, gwpi's 0.3 s later (two supervisors, two phases)."""
    return {"natpi": [line("natpi", i, 1000.0 + i, media) for i in range(seconds)],
            "gwpi": [line("gwpi", i, 1000.3 + i, media) for i in range(seconds)]}


def test_a_two_side_history_gives_each_directions_series() -> None:
    histories = two_sides()
    # natpi's viewer wrote no new snapshot before its 6th line (a program writes one
    # about each second, so now and then a line repeats the last); gwpi's 8th line is lost.
    histories["natpi"][5]["programs"]["viewer"] = dict(histories["natpi"][4]["programs"]["viewer"])
    del histories["gwpi"][7]
    data = plot.series(histories)
    assert data["start"] == 1000.0 and data["t"] == [float(i) for i in range(SECONDS)]
    # The first moment has no rate yet; every later one has, the repeated and the lost second too.
    assert data["fps"] == {VIDEO_OUT: [None] + [pytest.approx(15.0)] * (SECONDS - 1),
                           VIDEO_BACK: [None] + [pytest.approx(10.0)] * (SECONDS - 1)}
    assert data["kbps"][VIDEO_OUT] == [None] + [pytest.approx(15 * 5000 * 8 / 1000)] * (SECONDS - 1)
    assert data["kbps"][VIDEO_BACK] == [None] + [pytest.approx(10 * 4000 * 8 / 1000)] * (SECONDS - 1)
    assert data["kbps"][AUDIO_OUT] == [None] + [pytest.approx(50 * 60 * 8 / 1000)] * (SECONDS - 1)
    assert data["kbps"][AUDIO_BACK] == [None] + [pytest.approx(50 * 40 * 8 / 1000)] * (SECONDS - 1)
    # Latency and buffer are the receiver's own figures at that moment (gwpi's 8th: its 7th again).
    assert data["latency_ms"][VIDEO_OUT] == [40.0 + i for i in range(7)] + [46.0, 48.0, 49.0]
    assert data["latency_ms"][VIDEO_BACK] == [30.0 + i for i in range(5)] + [34.0] + [30.0 + i for i in range(6, 10)]
    assert data["buffer_ms"] == {AUDIO_OUT: [60.0 + i for i in range(7)] + [66.0, 68.0, 69.0],
                                 AUDIO_BACK: [80.0 + i for i in range(SECONDS)]}


def test_a_video_only_call_has_no_audio_series_and_clocks_apart_are_not_paired() -> None:
    data = plot.series(two_sides(5, media="video"))
    assert set(data["fps"]) == set(data["kbps"]) == set(data["latency_ms"]) == {VIDEO_OUT, VIDEO_BACK}
    assert data["buffer_ms"] == {}
    # gwpi's lines start 2 s after natpi's (its clock ahead, or its side up later): lines
    # within half a second pair, the others stand alone with the other side's last line kept.
    histories = two_sides(4)
    for record in histories["gwpi"]:
        record["at"] += 1.9
    moments = list(plot.merge(histories))
    assert [round(at, 1) for at, _ in moments] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.2, 1005.2]
    assert [sorted(side for side, got in lines.items() if got) for _, lines in moments] == \
        [["natpi"], ["natpi"], ["gwpi", "natpi"], ["gwpi", "natpi"], ["gwpi"], ["gwpi"]]
    data = plot.series(histories)
    assert data["fps"][VIDEO_OUT][:2] == [None, None]   # gwpi's viewer not heard of yet
    assert data["fps"][VIDEO_OUT][-1] == data["fps"][VIDEO_BACK][-1] + 5 == pytest.approx(15.0)


def test_a_history_line_cut_short_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = [json.dumps(line("natpi", i, 1000.0 + i)) for i in range(3)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:40])   # the disk filled mid-line
    assert [r["at"] for r in plot.read_history(path)] == [1000.0, 1001.0, 1002.0]


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


HOSTS = {"natpi": "raspberrypi", "gwpi": "raspberrypi5"}


def fetched(call: str, side: str, media: str = "both", history: Optional[List[dict]] = None,
            without: tuple = ()) -> Path:
    """A side's call directory as `fab hangup` copies it into the store."""
    d = store.side_dir(call, HOSTS[side])
    write(d / "summary.json", {"side": side, "duration_s": 62.5 if side == "gwpi" else 61.0})
    for name in {"both": ("camera", "viewer", "talk", "listen"), "video": ("camera", "viewer")}[media]:
        if name not in without:
            write(d / f"{name}.json", {"program": name, "frames": 10, "packets": 10, "reason": "signal SIGTERM"})
    if history is not None:
        (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return d


def new_call(call: str, media: str = "both", **fields) -> None:
    store.new_call(call, {"call": call, "media": media, "transport": "direct", "hosts": HOSTS, **fields})


@pytest.fixture
def a_store(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(store.ENV_STORE, str(tmp_path / "store"))
    return tmp_path / "store"


def test_list_names_every_call_newest_last_and_what_arrived(a_store: Path) -> None:
    histories = two_sides(3)
    new_call("20260301-090000-aaaa", call_setup_s=3.72, hangup_s=2.49)   # all there
    for side in ("natpi", "gwpi"):
        fetched("20260301-090000-aaaa", side, history=histories[side])
    new_call("20260301-100000-bbbb", media="video", transport="tunnel", call_setup_s=4.0, hangup_s=31.0)
    fetched("20260301-100000-bbbb", "natpi", media="video", history=histories["natpi"])   # gwpi not reached
    new_call("20260301-080000-cccc", call_setup_s=3.0)   # an older call: before history, a stats file lost
    fetched("20260301-080000-cccc", "natpi")
    fetched("20260301-080000-cccc", "gwpi", without=("viewer",))
    new_call("20260301-110000-dddd", started=1000.0, hung_up=4725.0)   # failed to start: nothing fetched
    (a_store / "20260301-110000-dddd").mkdir(exist_ok=True)

    records = report.call_list()
    assert [r["call"] for r in records] == ["20260301-080000-cccc", "20260301-090000-aaaa",
                                           "20260301-100000-bbbb", "20260301-110000-dddd"]
    lines = report.list_lines(records)
    assert lines[0].split() == ["call", "media", "transport", "duration", "set", "up", "s", "hang-up", "s",
                                "stats", "history"]
    assert len(lines) == 5
    assert lines[1].split() == ["20260301-080000-cccc", "both", "direct", "0:01:02", "3.0", "-", "missing",
                                "raspberrypi5/viewer.json", "none"]
    assert lines[2].split() == ["20260301-090000-aaaa", "both", "direct", "0:01:02", "3.7", "2.5", "both",
                                "sides", "both"]
    assert lines[3].split() == ["20260301-100000-bbbb", "video", "tunnel", "0:01:01", "4.0", "31.0", "natpi",
                                "only", "natpi", "only"]
    assert lines[4].split() == ["20260301-110000-dddd", "both", "direct", "1:02:05", "-", "-", "none", "fetched",
                                "none"]
    assert records[1]["complete"] and not records[0]["complete"] and records[0]["missing"] == \
        ["raspberrypi5/viewer.json"]
    many = report.list_lines([{**records[0], "missing": ["a.json", "b.json", "c.json", "d.json"]}])[1]
    assert many.split()[6:] == ["missing", "a.json,", "b.json", "and", "2", "more", "none"]
    assert report.duration(12.34) == "12.3 s" and report.duration(3725) == "1:02:05"
    assert report.list_lines([]) == [f"no calls recorded in {a_store} yet: `fab call`, then `fab hangup`"]


def test_the_plot_has_four_panels_a_line_per_direction_and_a_point_per_second(a_store: Path,
                                                                               tmp_path: Path) -> None:
    call = "20260301-090000-aaaa"
    new_call(call)
    histories = two_sides()
    for side in ("natpi", "gwpi"):
        fetched(call, side, history=histories[side])
    png = tmp_path / "call.png"
    drawn = plot.plot_call(None, png)   # the last call
    assert drawn["call"] == call and drawn["points"] == SECONDS and drawn["lines"] == {"natpi": 10, "gwpi": 10}
    figure = drawn["figure"]
    assert call in figure.get_suptitle()
    axes = figure.get_axes()
    labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
    assert labels == [[VIDEO_OUT, VIDEO_BACK], [VIDEO_OUT, VIDEO_BACK, AUDIO_OUT, AUDIO_BACK],
                      [VIDEO_OUT, VIDEO_BACK], [AUDIO_OUT, AUDIO_BACK]]
    assert [ax.get_ylabel() for ax in axes] == ["fps (frames/s)", "kbps received (kbit/s)", "video latency (ms)",
                                                "audio buffer (ms)"]
    assert axes[-1].get_xlabel() == "seconds since the call began (s)"
    for ax in axes:
        assert ax.get_legend() is not None
        for drawn_line in ax.get_lines():
            assert len(drawn_line.get_xdata()) == len(drawn_line.get_ydata()) == SECONDS
    assert list(axes[0].get_lines()[0].get_ydata()[1:]) == [15.0] * (SECONDS - 1)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == plot.SIZE_PX
        image.verify()


def test_a_video_only_call_says_so_in_the_audio_panel(tmp_path: Path) -> None:
    figure = plot.draw(plot.series(two_sides(4, media="video")), "call x", tmp_path / "v.png", size_px=(800, 600))
    audio = figure.get_axes()[3]
    assert audio.get_lines() == [] and [t.get_text() for t in audio.texts] == ["no audio in this call"]
    with Image.open(tmp_path / "v.png") as image:
        assert image.size == (800, 600)


def stats_task(**options) -> str:
    """`fab stats OPTIONS` as the task runs it; its one-line complaint if it refuses."""
    import fabfile
    with pytest.raises(Exit) as refused:
        fabfile.stats.body(None, **options)
    assert refused.value.code in (1, 2)
    return refused.value.message


def test_a_missing_history_is_one_clear_line(a_store: Path, tmp_path: Path) -> None:
    png = str(tmp_path / "call.png")
    assert stats_task(plot=png) == f"fab stats: no calls recorded in {a_store} yet: `fab call`, then `fab hangup`"
    new_call("c1")
    fetched("c1", "natpi")   # a call from before history.jsonl; gwpi's stats never arrived
    message = stats_task(plot=png, call="c1")
    assert message == (
        f"fab stats: call c1: cannot draw it: no history from natpi (raspberrypi): "
        f"{a_store}/c1/raspberrypi/history.jsonl is missing (a call from before per-second history, or natpi "
        f"runs an older pi2pi); nothing arrived from gwpi (raspberrypi5): it was not reached at hang-up")
    assert "\n" not in message
    fetched("c1", "gwpi", history=[])
    assert stats_task(plot=png, call="c1").endswith(
        f"gwpi (raspberrypi5)'s history {a_store}/c1/raspberrypi5/history.jsonl holds no line")
    new_call("c2")
    assert stats_task(plot=png, call="c2") == \
        "fab stats: call c2: nothing fetched from the Pis (`fab hangup` fetches it)"
    assert stats_task(plot=png, call="c9").startswith("fab stats: no call c9 in ")
    assert not Path(png).exists()
    assert stats_task(list_=True, plot=png).startswith("fab stats: --list shows every call")


def test_list_and_plot_through_the_task(a_store: Path, tmp_path: Path, capsys) -> None:
    import fabfile
    new_call("c1")
    histories = two_sides(3)
    for side in ("natpi", "gwpi"):
        fetched("c1", side, history=histories[side])
    fabfile.stats.body(None, list_=True)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("c1 ") and "both sides" in out[1]
    fabfile.stats.body(None, list_=True, json_=True)
    assert json.loads(capsys.readouterr().out)[0]["history"] == ["natpi", "gwpi"]
    fabfile.stats.body(None, plot=str(tmp_path / "c1.png"))
    assert capsys.readouterr().out.strip() == \
        f"call c1: 2 s drawn (3 points; history lines: natpi 3, gwpi 3) in {tmp_path / 'c1.png'}"
    assert (tmp_path / "c1.png").stat().st_size > 10_000
