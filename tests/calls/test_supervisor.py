"""`pi2pi up`, `pi2pi down`, `pi2pi status` on both sides of a call, over loopback:
the real programs, TCP, TurboJPEG, Opus, a file framebuffer and ALSA's null device.

What a user of the call would check: media flows both ways, with the token;
hang-up stops senders first so every frame and packet sent was received;
nothing is left running, the token is gone, a second call or hang-up is
refused or harmless; a SIGKILLed supervisor takes its programs with it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from tests.calls.sides import TOKEN, Side, call_processes, make_sides, wait_for
from tests.video.helpers import fb_rgb, label_at


@pytest.fixture
def sides(tmp_path: Path):
    made = make_sides(tmp_path)
    yield made
    for side in made.values():   # whatever a failed test left up
        side.pi2pi("down")
        for pid in call_processes(side):
            os.kill(pid, signal.SIGKILL)


def place(sides, call: str = "c1") -> None:
    for name in ("gwpi", "natpi"):
        result = sides[name].up(call)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    for side in sides.values():
        waited = side.pi2pi("status", "--wait-flowing", "30", timeout=60)
        assert waited.returncode == 0, f"{side.name}: {waited.stdout}{waited.stderr}"


def hang_up(sides) -> None:
    for phase in (("down", "--senders"), ("down",)):
        for side in sides.values():
            result = side.pi2pi(*phase)
            assert result.returncode == 0, result.stderr


def test_a_call_flows_both_ways_and_hangs_up_with_nothing_lost(sides) -> None:
    place(sides)
    natpi, gwpi = sides["natpi"], sides["gwpi"]
    # The token is the call's, readable by this user only, while the call is up.
    assert natpi.token.read_text().strip() == TOKEN
    assert stat.S_IMODE(natpi.token.stat().st_mode) == 0o600
    # The far picture shows on each side: the other's name, with rising frame numbers.
    seen = {}
    for side, far in ((natpi, "GWPI"), (gwpi, "NATPI")):
        def shown(side: Side = side):
            label = label_at(fb_rgb(side.root / "fb", "320x240x32"), (0, 0), (160, 120), (160, 120))
            return label if label[0] else None
        first = wait_for(shown, 10, f"{side.name}'s framebuffer to show a label")
        later = wait_for(lambda: (lambda l: l if l and l[1] > first[1] else None)(shown()), 10,
                         f"{side.name}'s frame number to rise")
        seen[side.name] = (first, later)
        assert first[0] == later[0] == far, seen
    status = gwpi.status()
    assert status["call"]["call"] == "c1" and status["call"]["supervisor"] == "running"
    assert set(status["call"]["programs"]) == {"camera", "viewer", "talk", "listen"}
    # Enough has flowed to make "nothing lost" mean something: wait for the receivers'
    # live counters (a frame count after a fixed time failed CI on a loaded machine).
    for side in sides.values():
        def enough(side: Side = side) -> bool:
            programs = side.status()["call"]["programs"]
            return (programs["viewer"].get("received", 0) > 10
                    and programs["listen"].get("packets", 0) > 10)
        wait_for(enough, 20, f"{side.name}'s viewer and listen to receive more than 10 each", step_s=0.2)

    hang_up(sides)
    for side in sides.values():
        assert side.current() is None and not side.token.exists()
        assert call_processes(side) == []
        summary = json.loads((side.calls / "c1" / "summary.json").read_text())
        assert summary["ended_by"] == "hangup" and summary["missing"] == [], summary
    for sender, receiver in ((natpi, gwpi), (gwpi, natpi)):
        camera, viewer = sender.stats("c1", "camera"), receiver.stats("c1", "viewer")
        talk, listen = sender.stats("c1", "talk"), receiver.stats("c1", "listen")
        assert camera["frames"] > 10 and camera["frames"] == viewer["received"], (camera, viewer)
        assert talk["packets"] > 10 and talk["packets"] == listen["packets"], (talk, listen)
        assert viewer["unproven"] == 0 and listen["unproven"] == 0
        for record in (camera, viewer, talk, listen):
            assert record["reason"] == "signal SIGTERM", record


def test_a_second_call_is_refused_and_a_second_hangup_is_harmless(sides) -> None:
    place(sides)
    again = sides["gwpi"].up("c2")
    assert again.returncode == 2 and "a call is already up here: c1" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    hang_up(sides)
    for side in sides.values():
        twice = side.pi2pi("down")
        assert twice.returncode == 0 and "no call is up" in twice.stdout, twice
    again = sides["gwpi"].up("c1")   # an id is a directory: never reused
    assert again.returncode == 2 and "a new call needs a new id" in again.stderr


def test_killing_the_supervisor_ends_its_programs_and_the_next_call_works(sides) -> None:
    place(sides)
    gwpi = sides["gwpi"]
    supervisor = gwpi.current()["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not call_processes(gwpi), 10, "gwpi's programs to end with their supervisor")
    # Their ports are free again (a listener binds them at once).
    port = int(gwpi.config.read_text().split("[viewer]\nlisten = 127.0.0.1:")[1].split()[0])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    assert gwpi.status()["call"]["supervisor"] == "gone"
    down = gwpi.pi2pi("down", "--json")
    answer = json.loads(down.stdout)
    assert answer["ended_by"] == "the supervisor died", answer
    # The programs ended by their parent-death SIGTERM wrote their stats all the same.
    assert answer["missing"] == [] and gwpi.stats("c1", "viewer")["reason"] == "signal SIGTERM"
    sides["natpi"].pi2pi("down")
    place(sides, "c2")
    hang_up(sides)


def test_a_taken_port_is_named_and_nothing_is_left_half_started(sides) -> None:
    gwpi = sides["gwpi"]
    port = int(gwpi.config.read_text().split("[viewer]\nlisten = 127.0.0.1:")[1].split()[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        result = gwpi.up("c1")
    assert result.returncode == 2, result
    assert f"viewer could not start: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert call_processes(gwpi) == [] and gwpi.current() is None and not gwpi.token.exists()
    assert json.loads((gwpi.calls / "c1" / "summary.json").read_text())["ended_by"].startswith("failed to start")


def test_bad_settings_and_a_missing_token_stop_before_anything_starts(sides) -> None:
    gwpi = sides["gwpi"]
    bad = gwpi.up("c1", "--size", "10x10")
    assert bad.returncode == 2 and "camera: size '10x10'" in bad.stderr, bad.stderr
    no_token = gwpi.pi2pi("up", "--call", "c1")
    assert no_token.returncode == 2 and "no token" in no_token.stderr, no_token.stderr
    short = gwpi.pi2pi("up", "--call", "c1", "--token-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    assert not (gwpi.calls / "c1").exists() and call_processes(gwpi) == []


def test_a_program_started_for_a_call_without_a_token_refuses(sides, tmp_path: Path) -> None:
    gwpi = sides["gwpi"]
    env = dict(os.environ, PI2PI_SUPERVISOR=str(os.getpid()), PYTHONPATH=str(Path(__file__).parents[2] / "runtime"))
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "pi2pi", "viewer", "--config", str(gwpi.config),
                             "--stats", str(tmp_path)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2 and "without the call's token" in result.stderr, result.stderr


# ----- who placed the call (up --by) ---------------------------------------------------

def up_by(side: Side, call: str, by: str) -> None:
    """`pi2pi up` on one side with a caller, as the command line hands it over (a Request with `by`)."""
    from pi2pi import call as calls, config, supervisor
    settings = config.build(supervisor.Settings, supervisor.SECTION, config.load(str(side.config)), {})
    request = supervisor.Request(call, ["audio"], {}, str(side.config), by=by)
    calls.up(settings, request, TOKEN, lambda: None)


def test_status_says_who_placed_the_call_and_an_older_call_json_still_reads(sides) -> None:
    gwpi = sides["gwpi"]
    up_by(gwpi, "c1", "gwpi")
    assert json.loads((gwpi.calls / "c1" / "call.json").read_text())["by"] == "gwpi"
    assert gwpi.status()["call"]["by"] == "gwpi"
    text = gwpi.pi2pi("status").stdout
    assert "call c1 placed by gwpi: " in text, text
    # A call.json written before `by` existed: status and the supervisor read it the same.
    from pi2pi import supervisor
    asked = json.loads((gwpi.calls / "c1" / "call.json").read_text())
    del asked["by"]
    (gwpi.calls / "c1" / "call.json").write_text(json.dumps(asked))
    assert gwpi.status()["call"]["by"] is None and " placed by " not in gwpi.pi2pi("status").stdout
    assert supervisor.Request(**asked).by is None
    assert gwpi.pi2pi("down").returncode == 0


def test_up_takes_a_caller_name_and_refuses_anything_that_is_not_one(sides) -> None:
    gwpi = sides["gwpi"]
    assert "--by NAME" in gwpi.pi2pi("up", "--help").stdout
    bad = gwpi.up("c1", "--by", "gwpi; id")
    assert bad.returncode == 2 and "argument --by: 'gwpi; id': letters, digits" in bad.stderr, bad.stderr
    assert not (gwpi.calls / "c1").exists() and call_processes(gwpi) == []


# ----- the call's history (history.jsonl) --------------------------------------------

COUNTERS = ("frames", "captured", "received", "bytes", "packets", "dropped", "corrupt", "underruns",
            "concealed", "reconnects")


def history(side: Side, call: str = "c1") -> list:
    """The side's history lines so far (a line still being written is not one yet)."""
    try:
        text = (side.calls / call / "history.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_a_call_keeps_a_line_of_history_each_second_with_rising_counters(sides) -> None:
    place(sides)
    natpi, gwpi = sides["natpi"], sides["gwpi"]
    wait_for(lambda: len(history(natpi)) >= 5 and len(history(gwpi)) >= 5, 20,
             "5 lines of history on each side")
    hang_up(sides)
    everything = {"camera", "viewer", "talk", "listen"}
    for side in (natpi, gwpi):
        lines = history(side)
        at = [line["at"] for line in lines]
        gaps = sorted(b - a for a, b in zip(at, at[1:]))
        # One line a second: every gap near 1 s (a busy machine may wake a supervisor late,
        # the next line keeps to the grid), and as many lines as seconds between the first and last.
        assert 0.9 <= gaps[len(gaps) // 2] <= 1.1 and 0.3 <= gaps[0] and gaps[-1] <= 2.0, (side.name, gaps)
        assert abs((at[-1] - at[0]) - (len(lines) - 1)) <= 1.0, (side.name, at)
        # While the call ran, every program had its snapshot in the line; after `down
        # --senders` only the receivers run, and the history goes on with them.
        assert set(lines[0]["programs"]) == everything, lines[0]
        for line in lines:
            assert set(line["programs"]) in (everything, {"viewer", "listen"}), (side.name, line)
            for name, snapshot in line["programs"].items():
                assert snapshot["schema"] == "pi2pi.live/1" and snapshot["program"] == name
        for name in everything:
            snapshots = [line["programs"][name] for line in lines if name in line["programs"]]
            for key in ("at",) + COUNTERS:
                values = [s[key] for s in snapshots if key in s]
                assert values == sorted(values), (side.name, name, key, values)
            # What the history saw is what the program counted, short of its last second.
            final = side.stats("c1", name)
            count = {"camera": "frames", "viewer": "received", "talk": "packets", "listen": "packets"}[name]
            assert 0 < snapshots[-1][count] <= final[count], (side.name, name, snapshots[-1], final)
        # The history is fetched with the stats: it is an ordinary file of the call directory.
        assert (side.calls / "c1" / "history.jsonl").stat().st_size > 0


def test_history_is_bounded_and_a_failing_write_never_ends_the_call(tmp_path: Path, caplog) -> None:
    from pi2pi.supervisor import History

    for name, frames in (("camera", 10), ("viewer", 9)):
        (tmp_path / f"{name}.live.json").write_text(json.dumps({"program": name, "frames": frames}))
    kept = History(tmp_path / "history.jsonl", max_lines=3)
    with caplog.at_level("INFO", logger="pi2pi.supervisor"):
        written = [kept.append(["camera", "viewer", "talk"], at=100.0 + i) for i in range(6)]
    assert written == [True, True, True, False, False, False]
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line["at"] for line in lines] == [100.0, 101.0, 102.0]
    assert lines[0]["programs"] == {"camera": {"program": "camera", "frames": 10},
                                    "viewer": {"program": "viewer", "frames": 9}}   # talk has no snapshot
    assert [r.message for r in caplog.records].count("history: 3 lines written (history.jsonl); "
                                                     "no more for this call") == 1
    assert History(tmp_path / "h2.jsonl").append(["talk"]) is False   # nothing to say: no line
    assert not (tmp_path / "h2.jsonl").exists()

    caplog.clear()
    (tmp_path / "h3.jsonl").mkdir()   # a history that cannot be written
    broken = History(tmp_path / "h3.jsonl")
    with caplog.at_level("INFO", logger="pi2pi.supervisor"):
        assert [broken.append(["camera"]) for _ in range(3)] == [False, False, False]
        (tmp_path / "h3.jsonl").rmdir()
        assert broken.append(["camera"]) is True
    messages = [r.message for r in caplog.records]
    assert len([m for m in messages if "cannot append" in m]) == 1, messages
    assert "history: writing again after 3 failed attempts" in messages
