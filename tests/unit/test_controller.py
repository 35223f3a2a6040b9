"""The controller's logic without hosts: the inventory's connection data, a
call's figures per direction from the stats files two Pis wrote, who placed a
call, and what gwpi's panel key may ask natpi for (controller/panel_remote.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller import report, site, store


def test_connection_data_comes_from_the_inventory_as_ansible_reads_it() -> None:
    gwpi = site.host_from_vars("gwpi", {"ansible_host": "10.0.0.2", "ansible_user": "pi",
                                        "ansible_ssh_common_args": "-o ProxyJump=admin@198.51.100.243:2222"})
    assert (gwpi.address, gwpi.port, gwpi.user, gwpi.local) == ("10.0.0.2", 22, "pi", False)
    assert gwpi.jump is not None and (gwpi.jump.address, gwpi.jump.port, gwpi.jump.user) == \
        ("198.51.100.243", 2222, "admin")
    assert gwpi.describe() == "gwpi (pi@10.0.0.2 via admin@198.51.100.243:2222)"
    natpi = site.host_from_vars("natpi", {"ansible_connection": "local", "ansible_user": "pi"})
    assert natpi.local and natpi.describe() == "natpi (this machine)"
    assert site.host_from_vars("gw", {}).address == "gw"   # no ansible_host: the name


@pytest.mark.parametrize("args, message", [
    ("-o Compression=yes", "fab understands only ProxyJump"),
    ("-o ProxyJump=a@b:1,c@d:2", "more than one hop"),
    ("-J admin@gw:ssh", "the port is not a number"),
])
def test_ssh_arguments_fab_cannot_honour_are_refused_by_name(args: str, message: str) -> None:
    with pytest.raises(site.SiteError, match=message):
        site.host_from_vars("gwpi", {"ansible_ssh_common_args": args})


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_directions_pair_each_sender_with_the_far_receiver(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(store.ENV_STORE, str(tmp_path))
    store.new_call("c1", {"call": "c1", "media": "both", "hosts": {"natpi": "raspberrypi", "gwpi": "raspberrypi5"},
                          "call_setup_s": 2.5, "hangup_s": 1.5, "transport": "direct"})
    for host, side in (("raspberrypi", "natpi"), ("raspberrypi5", "gwpi")):
        d = tmp_path / "c1" / host
        write(d / "summary.json", {"side": side})
        # natpi's camera followed the link down and back up; gwpi's never moved.
        moved = {"adaptations": 3, "adapt_downs": 2, "adapt_ups": 1, "adapt_size": "224x168", "adapt_quality": 30,
                 "adapt_fps": 15.0} if side == "natpi" else \
            {"adaptations": 0, "adapt_downs": 0, "adapt_ups": 0, "adapt_size": "320x240", "adapt_quality": 75,
             "adapt_fps": 15.0}
        write(d / "camera.json", {"frames": 100 if side == "natpi" else 90, "dropped": 2, "reason": "signal SIGTERM",
                                  "reconnects": 0, "refused": 1, "unproven": 0, "duration_s": 10.0,
                                  "adapt": True, **moved})
        write(d / "talk.json", {"packets": 500, "dropped": 0, "reason": "signal SIGTERM", "reconnects": 0})
        write(d / "listen.json", {"packets": 500, "underruns": 1, "concealed": 3, "kbps": 24.0, "dropped": 1,
                                  "reason": "signal SIGTERM", "frames_played": 499, "buffer_ms": {"mean": 60, "max": 80}})
    # gwpi's viewer stats are missing: natpi's camera -> gwpi's viewer says so.
    write(tmp_path / "c1" / "raspberrypi" / "viewer.json",
          {"received": 88, "frames": 85, "dropped": 3, "fps": 9.0, "kbps": 700.0, "reason": "signal SIGTERM",
           "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0}, "unproven": 2, "refused": 0})
    figures = report.call_stats()
    assert figures["call"] == "c1" and set(figures["directions"]) == set(report.DIRECTIONS)
    back = figures["directions"]["video_gwpi_to_natpi"]
    assert (back["sent"], back["received"], back["in_flight"], back["shown"]) == (90, 88, 2, 85)
    assert back["dropped"] == {"sender": 2, "receiver": 3} and back["refused"] == {"sender": 1, "receiver": 2}
    assert back["sender"] == "raspberrypi5 camera" and back["receiver"] == "raspberrypi viewer"
    out = figures["directions"]["video_natpi_to_gwpi"]
    assert out["missing"] == ["raspberrypi5/viewer.json"] and out["received"] is None and out["in_flight"] is None
    audio = figures["directions"]["audio_natpi_to_gwpi"]
    assert (audio["sent"], audio["received"], audio["underruns"], audio["played"]) == (500, 500, 1, 499)
    lines = report.table(figures)
    assert lines[0] == "call c1 (direct transport, set up in 2.5 s, hung up in 1.5 s)"
    assert any(line.startswith("video gwpi -> natpi") and "10/20/30" in line for line in lines)
    assert "video_natpi_to_gwpi: missing raspberrypi5/viewer.json" in lines
    assert out["adapt"] == {"on": True, "moves": 3, "downs": 2, "ups": 1, "size": "224x168", "quality": 30,
                            "fps": 15.0}
    assert back["adapt"]["moves"] == 0 and audio["adapt"] is None
    assert "video natpi -> gwpi: the camera followed the link, 3 moves (2 down, 1 up); it ended at 224x168, " \
           "quality 30, 15 fps" in lines
    assert not any(line.startswith("video gwpi -> natpi: the camera") for line in lines)   # it never moved


def test_no_calls_or_an_unknown_call_is_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(store.ENV_STORE, str(tmp_path))
    with pytest.raises(report.NoStats, match="no calls recorded"):
        report.call_stats()
    store.new_call("c1", {"call": "c1"})
    with pytest.raises(report.NoStats, match="no call c9"):
        report.call_stats("c9")
    with pytest.raises(report.NoStats, match="nothing fetched"):
        report.call_stats("c1")


def side_call(programs: dict, supervisor: str = "running") -> dict:
    return {"call": "c1", "supervisor": supervisor, "programs": programs}


CONNECTED = {"running": True, "state": "connected to 10.0.0.2:5010", "reconnects": 0}


def test_a_direction_is_up_only_when_both_ends_are_connected() -> None:
    from controller.call import media_state
    names = {"natpi": "natpi", "gwpi": "gwpi"}
    healthy = {n: dict(CONNECTED) for n in ("camera", "viewer", "talk", "listen")}
    both = media_state({"natpi": side_call(healthy), "gwpi": side_call(healthy)}, names)
    assert set(both) == {"video natpi -> gwpi", "video gwpi -> natpi", "audio natpi -> gwpi", "audio gwpi -> natpi"}
    assert all(d["up"] and d["why"] == [] for d in both.values()), both

    # gwpi's programs killed: every direction is down, each naming gwpi's end and
    # natpi's, which went back to dialing; the reconnects are summed per direction.
    killed = {n: {"running": False, "state": "ended: killed by SIGKILL"} for n in healthy}
    dialing = {n: {"running": True, "state": "dialing 198.51.100.243:5010", "reconnects": 1} for n in healthy}
    down = media_state({"natpi": side_call(dialing), "gwpi": side_call(killed)}, names)
    assert not any(d["up"] for d in down.values())
    assert down["video gwpi -> natpi"]["why"] == ["gwpi's camera ended: killed by SIGKILL",
                                                  "natpi's viewer is dialing 198.51.100.243:5010"]
    assert down["audio natpi -> gwpi"]["reconnects"] == 1

    # A video-only call has no audio directions; a side without its call or not reached is named.
    video = {n: dict(CONNECTED) for n in ("camera", "viewer")}
    one_sided = media_state({"natpi": side_call(video), "gwpi": None}, names)
    assert set(one_sided) == {"video natpi -> gwpi", "video gwpi -> natpi"}
    assert one_sided["video natpi -> gwpi"]["why"] == ["gwpi has no call up"]
    gone = media_state({"natpi": side_call(video), "gwpi": side_call(video, supervisor="gone")}, names)
    assert gone["video gwpi -> natpi"]["why"] == ["gwpi's supervisor is gone"]
    unreached = media_state({"natpi": side_call(video)}, names)
    assert unreached["video natpi -> gwpi"]["why"] == ["gwpi not reached"]
    assert media_state({"natpi": None, "gwpi": None}, names) == {}


def test_a_program_that_ended_is_described_by_how() -> None:
    from pi2pi.call import ended
    assert ended(None) == "not running"
    assert ended(-9) == "ended: killed by SIGKILL"
    assert ended(2) == "ended (exit 2)"


def test_watch_rates_come_from_the_receivers_two_snapshots() -> None:
    from controller import watch

    def snap(at: float, frames: int, audio_bytes: int) -> dict:
        video = {"at": at, "frames": frames, "bytes": frames * 6000, "dropped": 2, "latency_ms": 41.5, "reconnects": 1}
        audio = {"at": at, "packets": frames * 5, "bytes": audio_bytes, "fill_ms": 60.0, "underruns": 3, "dropped": 0}
        side = {"camera": {"at": at, "dropped": 1, "reconnects": 0}, "viewer": video,
                "talk": {"at": at, "dropped": 4}, "listen": audio}
        return {"natpi": side, "gwpi": {k: dict(v) for k, v in side.items()}}

    before, now = snap(100.0, 30, 5000), snap(102.0, 60, 10000)
    rows = watch.figures(now, before)
    video = rows["video natpi -> gwpi"]
    assert video["fps"] == 15.0 and video["kbps"] == 30 * 6000 * 8 / 1000 / 2 and video["latency_ms"] == 41.5
    assert video["drops"] == 3 and video["reconnects"] == 1 and video["buffer_ms"] is None
    audio = rows["audio gwpi -> natpi"]
    assert audio["fps"] is None and audio["kbps"] == 5000 * 8 / 1000 / 2 and audio["buffer_ms"] == 60.0
    assert audio["underruns"] == 3 and audio["drops"] == 4
    # The first look has no rates yet; a program restarted (counters back to 0) gives none either.
    assert watch.figures(now, None)["video natpi -> gwpi"]["fps"] is None
    assert watch.figures(before, now)["video natpi -> gwpi"]["fps"] is None

    # Two looks can find the same snapshot (written once a second): rates stay measured
    # against the one before it, never shown as none.
    earlier = watch.Earlier()
    assert earlier.update(before) == {"natpi": {}, "gwpi": {}}
    assert watch.figures(now, earlier.update(now))["video natpi -> gwpi"]["fps"] == 15.0
    assert watch.figures(now, earlier.update(now))["video natpi -> gwpi"]["fps"] == 15.0
    later = snap(103.0, 75, 12000)
    assert watch.figures(later, earlier.update(later))["video natpi -> gwpi"]["fps"] == 15.0

    up = {d: {"up": True, "why": [], "reconnects": 0} for d in rows}
    up["audio natpi -> gwpi"] = {"up": False, "why": ["gwpi's listen ended: killed by SIGKILL"], "reconnects": 0}
    lines = watch.table(rows, up)
    assert lines[0].startswith("direction") and len(lines) == 5
    assert lines[1].split()[:5] == ["video", "natpi", "->", "gwpi", "15.0"]
    assert "DOWN: gwpi's listen ended: killed by SIGKILL" in lines[3]


# ----- who placed a call (fab call --by) -------------------------------------------------

class FakePi:
    """A Pi as the controller reaches it: answers `pi2pi` commands, records them."""

    def __init__(self, name: str, side: str) -> None:
        from controller.site import Host
        self.name, self.side, self.host = name, side, Host(name=name, address=name)
        self.commands: list = []

    def run(self, command: str, stdin=None, on_line=None, timeout: float = 60):
        from controller.remote import Result
        self.commands.append(command)
        if command == "pi2pi status --json":
            return Result(0, json.dumps({"side": self.side, "transport": "direct", "call": None,
                                         "tunnel": {"up": True, "detail": "-"}}), "")
        if command.startswith("pi2pi up "):
            return Result(0, json.dumps({"call": "c", "side": self.side, "programs": {}}) + "\n", "")
        return Result(0, "", "")   # status --wait-flowing: media arrived


def controller_of(pis: list, said: list):
    from controller.call import Controller
    from controller.site import Host, Site
    controller = Controller(Site("test", [Host(p.name, p.name) for p in pis], None), said.append)
    controller.remotes = pis
    return controller


def up_command(pi: FakePi) -> str:
    return next(c for c in pi.commands if c.startswith("pi2pi up "))


def test_a_call_tells_both_pis_who_placed_it_natpi_unless_named(tmp_path: Path, monkeypatch) -> None:
    from controller.call import Options
    monkeypatch.setenv(store.ENV_STORE, str(tmp_path))
    natpi, gwpi = FakePi("raspberrypi", "natpi"), FakePi("raspberrypi5", "gwpi")
    said: list = []
    call_id, _ = controller_of([natpi, gwpi], said).place_call(Options(media="audio"))
    # Not named: natpi's inventory name (this controller's own side), on both Pis.
    for pi in (natpi, gwpi):
        assert " --by raspberrypi " in up_command(pi) + " ", pi.commands
    assert said[-1].endswith("placed by raspberrypi"), said
    assert json.loads((tmp_path / call_id / "control.json").read_text())["options"]["by"] == "raspberrypi"

    natpi.commands.clear(), gwpi.commands.clear()
    controller_of([natpi, gwpi], said).place_call(Options(media="audio", by="raspberrypi5"))
    assert "--by raspberrypi5" in up_command(natpi) and "--by raspberrypi5" in up_command(gwpi)


def test_a_caller_who_is_not_a_pi_of_the_inventory_is_refused_before_anything_runs(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from controller.call import CallFailed, Options
    monkeypatch.setenv(store.ENV_STORE, str(tmp_path))
    natpi, gwpi = FakePi("natpi", "natpi"), FakePi("gwpi", "gwpi")
    with pytest.raises(CallFailed, match=r"--by gwpi; id: who places a call is one of the inventory's Pis "
                                         r"\(natpi, gwpi\)"):
        controller_of([natpi, gwpi], []).place_call(Options(by="gwpi; id"))
    assert natpi.commands == gwpi.commands == []


def test_up_arguments_quote_every_word() -> None:
    from controller.call import Options
    assert Options(media="video", fps=5.0, by="gwpi").up_arguments() == "--media video --fps 5.0 --by gwpi"
    assert Options(by="it's").up_arguments() == "--media both --by 'it'\"'\"'s'"


def test_fab_status_says_who_placed_the_call(monkeypatch, capsys) -> None:
    import invoke

    import fabfile

    class Found:
        def site_status(self) -> dict:
            call = {"call": "c1", "by": "gwpi", "state": "flowing", "programs": {"talk": {"state": "connected"}}}
            return {"inventory": "inventory/lab", "media": {},
                    "pis": {"natpi": {"side": "natpi", "transport": "direct", "tunnel": {"up": None, "detail": "-"},
                                      "call": call},
                            "gwpi": {"side": "gwpi", "transport": "direct", "tunnel": {"up": True, "detail": "-"},
                                     "call": {**call, "by": None}}}}

    monkeypatch.setattr(fabfile, "with_controller", lambda work: work(Found()))
    fabfile.status(invoke.Context())
    lines = capsys.readouterr().out.splitlines()
    assert "  call c1 placed by gwpi: flowing" in lines
    assert "  call c1: flowing" in lines   # a Pi whose call.json predates --by says nothing of it


# ----- gwpi's panel key: the forced command on natpi (controller/panel_remote.py) -------

CHECKOUT = Path("/home/pi/pi2pi")


@pytest.mark.parametrize("asked, words", [
    ("call", ["call", "--by", "gwpi"]),
    ("call --video-only", ["call", "--video-only", "--by", "gwpi"]),
    ("call --audio-only", ["call", "--audio-only", "--by", "gwpi"]),
    ("hangup", ["hangup"]),
    ("status", ["status"]),
    ("status --json", ["status", "--json"]),
])
def test_the_panel_key_runs_fab_for_each_allowed_request(asked: str, words: list, monkeypatch,
                                                         tmp_path: Path, remote_log: Path) -> None:
    from controller import panel_remote
    fab = str(CHECKOUT / ".venv/bin/fab")
    assert panel_remote.fab_argv(CHECKOUT, panel_remote.task_words(asked), "gwpi") == [
        fab, "-r", str(CHECKOUT), *words]
    # As sshd runs it: exec (no shell) of the checkout's own fab, from the checkout.
    ran: list = []
    monkeypatch.chdir("/")
    monkeypatch.setenv(panel_remote.ENV_INVENTORY, "from a profile")
    code = panel_remote.main(["--by", "gwpi", "--inventory", "/home/pi/pi2pi/inventory/site"],
                             {"SSH_ORIGINAL_COMMAND": asked, "SSH_CONNECTION": "127.0.0.1 4 127.0.0.1 22"},
                             run=lambda path, args: ran.append((path, args, os.getcwd())), checkout=tmp_path)
    fab = str(tmp_path / ".venv/bin/fab")
    assert code == 0 and ran == [(fab, [fab, "-r", str(tmp_path), *words], str(tmp_path))]
    # fab reads the inventory that provisioned the key.
    assert os.environ[panel_remote.ENV_INVENTORY] == "/home/pi/pi2pi/inventory/site"


@pytest.fixture
def remote_log(tmp_path: Path):
    """panel_remote's own log, as sshd's forced command sets it up (a file; nothing propagates
    to the test's root logger), put back as it was afterwards; its path."""
    import logging

    from controller import panel_remote
    path = tmp_path / "state" / "panel-remote.log"
    raising, propagating = logging.raiseExceptions, panel_remote.log.propagate
    panel_remote.setup_log(path)
    yield path
    for handler in list(panel_remote.log.handlers):
        panel_remote.log.removeHandler(handler)
        handler.close()
    logging.raiseExceptions, panel_remote.log.propagate = raising, propagating


@pytest.mark.parametrize("asked", [
    None,                                   # ssh with no command: a shell
    "", "id", "bash", "sh -c id", "fab call",
    "call --by natpi",                      # the caller is this key's, never the client's
    "call --video-only --audio-only", "call --size 1920x1080", "hangup now", "status --json --list",
    "stats", "watch", "call; id", "call && id", "call | id", "call `id`", "call $(id)", "status\nid",
    "call\x00", " call", "call ", "call  --audio-only", "CALL", "status > /tmp/x", "call --audio-only\r",
    "x" * 5000,
])
def test_the_panel_key_refuses_anything_else_in_one_line(asked, remote_log: Path, capsys) -> None:
    from controller import panel_remote
    ran: list = []
    environ = {} if asked is None else {"SSH_ORIGINAL_COMMAND": asked}
    code = panel_remote.main(["--by", "gwpi"], environ, run=lambda *a: ran.append(a), checkout=CHECKOUT)
    assert code == panel_remote.REFUSED_EXIT == 2 and ran == []
    err = capsys.readouterr().err
    assert err.startswith("pi2pi panel: refused: ") and err.count("\n") == 1, err
    logged = remote_log.read_text().splitlines()
    assert len(logged) == 1 and " WARNING refused from ? (key of gwpi): " in logged[0], logged
    assert len(logged[0]) < 400, "a long request is cut short in the log"


def test_the_panel_key_log_is_bounded_and_never_reaches_the_client(remote_log: Path, capsys) -> None:
    import logging

    from controller import panel_remote
    for _ in range(3):
        panel_remote.main(["--by", "gwpi"], {"SSH_ORIGINAL_COMMAND": "id"}, run=lambda *a: None, checkout=CHECKOUT)
    assert remote_log.read_text().count("refused from ? (key of gwpi): not one of the panel's commands: 'id'") == 3
    [handler] = [h for h in panel_remote.log.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert handler.maxBytes == panel_remote.LOG_MAX_BYTES and handler.backupCount == 1
    assert capsys.readouterr().err.count("\n") == 3   # the refusals' own lines, nothing from the log


def test_a_missing_fab_is_one_line_too(monkeypatch, capsys, tmp_path: Path, remote_log: Path) -> None:
    from controller import panel_remote
    monkeypatch.chdir(tmp_path)
    code = panel_remote.main(["--by", "gwpi"], {"SSH_ORIGINAL_COMMAND": "status"}, checkout=tmp_path)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("pi2pi panel: natpi cannot run ") and err.count("\n") == 1, err
    assert "ERROR cannot run " in remote_log.read_text()
