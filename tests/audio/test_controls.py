"""Mute the microphone and set the speaker volume of the call that is up.

The calls here are real: `pi2pi up --media audio` starts the supervisor, which
runs talk (the test signal) and listen (ALSA null, paced by the clock,
recording) over TCP on 127.0.0.1 with `--stats <call dir> --live`; the controls
are changed through `pi2pi mute` / `pi2pi volume` and through the functions the
touch panel calls; the recording is analysed afterwards on the timeline that
listen.json gives it (`record_start_unix`). The rest are unit tests of the
controls file, its validation, the toggle and the level ramp.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

from pi2pi import cli, config, controls, supervisor
from pi2pi.audio.gain import Gain
from pi2pi.audio.testsignal import TestSignal
from tests.audio import analysis
from tests.calls.sides import Side, call_processes, free_ports, wait_for

RATE = 48000
WINDOW_S = 0.01
SILENT_RMS = 32768 * 10 ** (-60 / 20)    # -60 dBFS: near silence
SOUND_RMS = 32768 * 10 ** (-40 / 20)     # -40 dBFS: a tone is sounding
TONE_DBFS = 20 * np.log10(8231 / np.sqrt(2) / 32768)   # the test signal's tones: -15.0 dBFS RMS
LABEL = "AB"                              # talk's test signal: a 1.11 s repetition
EFFECT_S = 0.5                            # a change is heard within this long (the brief's bar)


# ----- a call on this machine ------------------------------------------------------------


@pytest.fixture
def audio_call(tmp_path: Path) -> Iterator[Side]:
    """One side's config: its own talk dials its own listen (the audio of a call, looped back)."""
    side = Side("natpi", tmp_path / "natpi")
    side.root.mkdir(parents=True)
    port = free_ports(1)[0]
    side.config.write_text(f"""\
[call]
side = natpi
token_file = {side.token}
calls = {side.calls}
record = yes
drain_s = 0.5
stop_timeout_s = 5
[talk]
connect = 127.0.0.1:{port}
device = testsignal
label = {LABEL}
[listen]
listen = 127.0.0.1:{port}
device = null
pace = clock
buffer = 60
periods = 20
""")
    yield side
    side.pi2pi("down")
    for pid in call_processes(side):   # whatever a failed test left running
        os.kill(pid, signal.SIGKILL)


def call_settings(side: Side) -> supervisor.Settings:
    """The [call] settings, as the panel builds them."""
    return config.build(supervisor.Settings, supervisor.SECTION, config.load(str(side.config)), {})


def live(side: Side, program: str) -> Dict[str, Any]:
    try:
        return json.loads((side.calls / "c1" / f"{program}.live.json").read_text())
    except (OSError, ValueError):
        return {}


def start_call(side: Side) -> None:
    result = side.up("c1", "--media", "audio")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: live(side, "listen").get("flowing"), 15, "listen to receive packets")


def packets_after(side: Side, since: float, more: int, timeout_s: float = 5.0) -> int:
    """Wait until listen has received `more` packets after wall time `since`; its count then.

    The live file is at most a second old, so the count it held when written
    after `since` is the base, and `more` packets on top of it all came later."""
    def newer() -> Optional[Dict[str, Any]]:
        snapshot = live(side, "listen")
        return snapshot if snapshot.get("at", 0) >= since else None

    base = wait_for(newer, timeout_s, "a live snapshot of listen newer than the change")["packets"]

    def enough() -> Optional[Dict[str, Any]]:
        snapshot = live(side, "listen")
        return snapshot if snapshot.get("packets", 0) >= base + more else None

    return wait_for(enough, timeout_s, f"{more} packets more at listen")["packets"]


def changed_at(side: Side) -> float:
    """When the controls file was last written (the moment the change was asked)."""
    return (side.calls / "c1" / controls.FILE).stat().st_mtime


def end_call(side: Side) -> Tuple[Dict[str, Any], Dict[str, Any], np.ndarray]:
    result = side.pi2pi("down")
    assert result.returncode == 0, result.stderr
    _, heard = analysis.read_wav(side.calls / "c1" / "listen.wav")
    return side.stats("c1", "talk"), side.stats("c1", "listen"), heard


# ----- the recording ----------------------------------------------------------------------


def window_rms(x: np.ndarray) -> np.ndarray:
    n = int(RATE * WINDOW_S)
    frames = x[:x.size // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt(np.mean(frames ** 2, axis=1))


class Timeline:
    """The recording against wall time: sample i was heard at record_start_unix + i / RATE
    (listen records the device's silence of a gap too, so the timeline holds)."""

    def __init__(self, heard: np.ndarray, record_start_unix: float) -> None:
        self.heard = heard
        self.rms = window_rms(heard)
        self.start = record_start_unix

    def window(self, t: float) -> int:
        return int(np.clip((t - self.start) / WINDOW_S, 0, self.rms.size))

    def between(self, t0: float, t1: float) -> np.ndarray:
        return self.rms[self.window(t0):self.window(t1)]

    def level_db(self, t0: float, t1: float) -> float:
        """The tones' level: the 75th percentile of the 10 ms windows' RMS (the signal is
        ~60 % tones, so this is a tone's plateau whatever part of the pattern the span holds)."""
        part = self.between(t0, t1)
        assert part.size >= 50, f"only {part.size * WINDOW_S:.2f} s recorded between the marks"
        return float(20 * np.log10(np.percentile(part, 75) / 32768))

    def switched(self, t0: float, period_s: float, to_silence: bool) -> Tuple[float, float]:
        """When, after t0, the sound was switched off (or on): (at least, at most) seconds.

        The test signal repeats every period_s, so where a tone plays a period
        earlier (switching off) or later (switching on), this one should sound
        too: the switch lies between the last window that does as it did before
        and the first that does as it does after. (The signal's pauses leave no
        trace of a switch: hence two bounds, not one number.)"""
        period = int(round(period_s / WINDOW_S))
        first = self.window(t0)
        shift = -period if to_silence else period
        lo, hi = 0.0, None
        for k in range(first, min(first + int(1.0 / WINDOW_S), self.rms.size - period)):
            if not (self.rms[k + shift - 1:k + shift + 2] > SOUND_RMS).all():
                continue   # not inside a tone of the reference repetition
            sounds = self.rms[k] > SOUND_RMS
            if sounds == to_silence:   # as before the switch
                if hi is None:
                    lo = (k + 1 - first) * WINDOW_S
            elif hi is None:
                hi = (k - first) * WINDOW_S
        assert hi is not None, "no switch found within 1 s"
        return lo, hi

    def hard_cuts_until(self, t: float) -> List[int]:
        """Hard cuts heard before wall time t (the hang-up, later, stops a tone where it is)."""
        return analysis.hard_cuts(self.heard[:self.window(t) * int(RATE * WINDOW_S)], RATE)


def cuts_allowed(listen: Dict[str, Any]) -> int:
    """Hard cuts a counted gap may explain (as test_audio_call judges a chirp)."""
    return 2 * (listen["underruns"] + listen["device_underruns"])


# ----- the calls --------------------------------------------------------------------------


def test_mute_silences_the_far_side_while_packets_flow_and_unmute_brings_it_back(audio_call: Side) -> None:
    side = audio_call
    start_call(side)
    packets_after(side, time.time(), 75)                     # 1.5 s of the signal at its own level

    muting = side.pi2pi("mute", "on")
    assert muting.returncode == 0 and muting.stdout.strip() == "microphone muted", muting
    muted_at = changed_at(side)
    wait_for(lambda: live(side, "talk").get("muted") is True, 3, "talk to report muted")
    # Packets go on arriving while muted: 1.5 s of them, all sent after the mute took hold.
    packets_after(side, muted_at + EFFECT_S, 75)

    assert controls.set_muted(call_settings(side), False).muted is False   # the panel's way
    unmuted_at = changed_at(side)
    wait_for(lambda: live(side, "talk").get("muted") is False, 3, "talk to report unmuted")
    packets_after(side, unmuted_at + EFFECT_S, 75)
    talk, listen, heard = end_call(side)

    t = Timeline(heard, listen["record_start_unix"])
    period_s = TestSignal(LABEL, RATE, 1).period_s
    before = t.level_db(muted_at - 1.5, muted_at - 0.05)
    assert abs(before - TONE_DBFS) < 3, f"the signal is heard at {before:.1f} dBFS before the mute"
    quiet = t.between(muted_at + EFFECT_S, unmuted_at)
    assert quiet.size >= 100 and quiet.max() < SILENT_RMS, \
        f"muted, yet up to {20 * np.log10(max(quiet.max(), 1) / 32768):.1f} dBFS is heard"
    after = t.level_db(unmuted_at + EFFECT_S, unmuted_at + EFFECT_S + 1.5)
    assert abs(after - before) < 1.0, f"after unmuting {after:.1f} dBFS, before {before:.1f}"
    assert len(t.hard_cuts_until(unmuted_at + EFFECT_S + 1.5)) <= cuts_allowed(listen), "the mute clicks"

    # talk sent every frame: the muted ones as silence, and nothing was lost on the way.
    muted_s = unmuted_at - muted_at
    assert abs(talk["frames_muted"] * 0.02 - muted_s) < 0.3, (talk["frames_muted"], muted_s)
    assert talk["packets"] == listen["packets"] and talk["dropped"] == 0
    assert talk["muted"] is False and listen["volume"] == 100
    off = t.switched(muted_at, period_s, to_silence=True)
    on = t.switched(unmuted_at, period_s, to_silence=False)
    assert off[1] <= EFFECT_S and on[1] <= EFFECT_S, (off, on)
    print(f"\nheard muted {off[0] * 1000:.0f}..{off[1] * 1000:.0f} ms after the mute, "
          f"unmuted {on[0] * 1000:.0f}..{on[1] * 1000:.0f} ms after; level {before:.1f} dBFS before, "
          f"{after:.1f} after; muted {muted_s:.2f} s, {talk['frames_muted']} frames")


def test_volume_50_is_6_db_below_100_in_the_same_call(audio_call: Side) -> None:
    side = audio_call
    start_call(side)
    packets_after(side, time.time(), 75)

    halved = side.pi2pi("volume", "50")
    assert halved.returncode == 0 and halved.stdout.strip() == "speaker volume 50%", halved
    half_at = changed_at(side)
    wait_for(lambda: live(side, "listen").get("volume") == 50, 3, "listen to report volume 50")
    packets_after(side, half_at + EFFECT_S, 75)

    settings = call_settings(side)
    assert controls.set_volume(settings, 100).volume == 100   # the panel's way
    full_at = changed_at(side)
    assert controls.current(settings) == controls.Controls(muted=False, volume=100)
    shown = side.pi2pi("volume")
    assert shown.returncode == 0 and shown.stdout.strip() == "speaker volume 100%", shown
    packets_after(side, full_at + EFFECT_S, 75)
    talk, listen, heard = end_call(side)

    t = Timeline(heard, listen["record_start_unix"])
    full = t.level_db(half_at - 1.5, half_at - 0.05)
    half = t.level_db(half_at + EFFECT_S, full_at - 0.05)
    again = t.level_db(full_at + EFFECT_S, full_at + EFFECT_S + 1.5)
    assert abs(full - TONE_DBFS) < 3, f"the signal is heard at {full:.1f} dBFS at volume 100"
    assert abs((half - full) - 20 * np.log10(0.5)) < 1.5, f"volume 50: {half - full:+.2f} dB against 100"
    assert abs(again - full) < 1.0, f"back at 100: {again - full:+.2f} dB against before"
    assert len(t.hard_cuts_until(full_at + EFFECT_S + 1.5)) <= cuts_allowed(listen), "a volume change clicks"
    assert listen["volume"] == 100 and talk["muted"] is False and talk["frames_muted"] == 0
    print(f"\nvolume 50: {half - full:+.2f} dB against 100 ({full:.1f} dBFS); back at 100: {again - full:+.2f} dB")


# ----- unit tests: the file, its values, the commands ------------------------------------


def test_no_file_means_the_defaults_and_a_written_file_reads_back(tmp_path: Path) -> None:
    assert controls.read(tmp_path) == controls.Controls() == controls.Controls(muted=False, volume=100)
    controls.write(tmp_path, controls.Controls(muted=True, volume=150))
    assert controls.read(tmp_path) == controls.Controls(muted=True, volume=150)
    record = json.loads((tmp_path / "controls.json").read_text())
    assert record == {"schema": "pi2pi.controls/1", "muted": True, "volume": 150}
    assert [p.name for p in tmp_path.iterdir()] == ["controls.json"]   # no temp file left


@pytest.mark.parametrize("made, message", [
    (dict(volume=201), "volume 201: want 0..200"),
    (dict(volume=-1), "volume -1: want 0..200"),
    (dict(volume=50.5), "volume 50.5: want a whole percentage"),
    (dict(volume="50"), "volume '50': want a whole percentage"),
    (dict(volume=True), "volume True: want a whole percentage"),
    (dict(muted="yes"), "muted 'yes': want true or false"),
])
def test_bad_values_are_refused_and_never_written(tmp_path: Path, made: Dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        controls.write(tmp_path, controls.Controls(**made))
    assert not (tmp_path / "controls.json").exists()


@pytest.mark.parametrize("text, message", [
    ("{not json", "cannot be read as JSON"),
    ("[1, 2]", "want a JSON object"),
    ('{"volume": 500}', "volume 500: want 0..200"),
    ('{"muted": 1}', "muted 1: want true or false"),
])
def test_a_bad_file_is_named_in_the_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "controls.json").write_text(text)
    with pytest.raises(config.ConfigError, match=message) as err:
        controls.read(tmp_path)
    assert "controls.json" in str(err.value)


def test_a_newer_writers_keys_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "controls.json").write_text('{"schema": "pi2pi.controls/2", "volume": 80, "camera_off": true}')
    assert controls.read(tmp_path) == controls.Controls(volume=80)


def test_a_program_notices_a_change_within_the_poll_period_and_survives_a_bad_file(tmp_path: Path) -> None:
    # The watch's own clock, moved by the test: one period after a change, it is seen.
    now = [100.0]
    watch = controls.Watch(tmp_path, clock=lambda: now[0])
    assert watch.poll() == controls.Controls()            # no file: as a program run by hand
    for wanted in (controls.Controls(muted=True), controls.Controls(muted=True, volume=40)):
        controls.write(tmp_path, wanted)
        now[0] += controls.CHECK_EVERY_S
        assert watch.poll() == wanted                      # noticed within one period (the brief: ~0.2 s)
    (tmp_path / "controls.json").write_text('{"volume": "loud"}')   # a writer's slip
    now[0] += controls.CHECK_EVERY_S
    assert watch.poll() == controls.Controls(muted=True, volume=40)  # the last good ones stay
    (tmp_path / "controls.json").unlink()
    now[0] += controls.CHECK_EVERY_S
    assert watch.poll() == controls.Controls()            # the file gone: the defaults


def test_a_program_looks_at_the_file_at_most_once_a_period(tmp_path: Path, monkeypatch) -> None:
    now = [100.0]
    watch = controls.Watch(tmp_path, clock=lambda: now[0])
    looks = []
    real_stat = os.stat
    monkeypatch.setattr(controls.os, "stat", lambda p, *a, **k: looks.append(p) or real_stat(p, *a, **k))
    for _ in range(1000):                                  # a loop far faster than the period
        watch.poll()
        now[0] += 0.001
    assert len(looks) == 10                                # 1 s of polling, one look per 0.1 s


@pytest.fixture
def fake_call(tmp_path: Path) -> Iterator[Tuple[Path, Path]]:
    """A call 'up' for the commands: current.json naming a live process called supervise
    (the commands look for nothing else), and its call directory. (config, call dir)."""
    conf = tmp_path / "pi2pi.conf"
    calls = tmp_path / "calls"
    (calls / "c9").mkdir(parents=True)
    conf.write_text(f"[call]\ncalls = {calls}\n")
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "supervise"])
    (calls / "current.json").write_text(json.dumps({"call": "c9", "pid": stand_in.pid}))
    try:
        yield conf, calls / "c9"
    finally:
        stand_in.kill()
        stand_in.wait()


def run_cli(capsys, *argv: str) -> Tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_mute_toggles_by_default_and_volume_prints_or_sets(fake_call, capsys) -> None:
    conf, call_dir = fake_call
    assert run_cli(capsys, "mute", "--config", str(conf)) == (0, "microphone muted", "")
    assert run_cli(capsys, "mute", "--config", str(conf)) == (0, "microphone on", "")
    assert run_cli(capsys, "mute", "toggle", "--config", str(conf)) == (0, "microphone muted", "")
    assert run_cli(capsys, "mute", "ON", "--config", str(conf)) == (0, "microphone muted", "")
    assert run_cli(capsys, "mute", "off", "--config", str(conf)) == (0, "microphone on", "")
    assert run_cli(capsys, "volume", "--config", str(conf)) == (0, "speaker volume 100%", "")
    assert run_cli(capsys, "volume", "150%", "--config", str(conf)) == (0, "speaker volume 150%", "")
    assert controls.read(call_dir) == controls.Controls(muted=False, volume=150)
    settings = config.build(supervisor.Settings, supervisor.SECTION, config.load(str(conf)), {})
    assert controls.toggle_muted(settings).muted is True
    assert controls.current(settings) == controls.Controls(muted=True, volume=150)


@pytest.mark.parametrize("argv, message", [
    (["volume", "500"], "pi2pi volume: error: volume 500: want 0..200 percent (100 = as received)"),
    (["volume", "loud"], "pi2pi volume: error: volume 'loud': want a whole percentage 0..200"),
    (["volume", "-5"], "pi2pi volume: error: volume -5: want 0..200 percent (100 = as received)"),
    (["mute", "maybe"], "pi2pi mute: error: mute 'maybe': want on, off, toggle"),
])
def test_a_bad_value_is_one_line_and_exit_2(tmp_path: Path, argv: List[str], message: str) -> None:
    """As a person types it: the real command, whether a call is up or not."""
    conf = tmp_path / "pi2pi.conf"
    conf.write_text(f"[call]\ncalls = {tmp_path / 'calls'}\n")
    result = subprocess.run([sys.executable, "-m", "pi2pi", *argv, "--config", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [message], result.stderr
    assert result.stdout == ""


def test_with_no_call_up_the_commands_say_so_and_exit_1(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "pi2pi.conf"
    calls = tmp_path / "calls"
    conf.write_text(f"[call]\ncalls = {calls}\n")
    for argv in (["mute", "on"], ["volume"], ["volume", "80"]):
        assert run_cli(capsys, *argv, "--config", str(conf)) == \
            (1, "", f"pi2pi {argv[0]}: error: no call is up")
    calls.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass", "supervise"])
    dead.wait()
    (calls / "current.json").write_text(json.dumps({"call": "c9", "pid": dead.pid}))   # its supervisor died
    (calls / "c9").mkdir()
    assert run_cli(capsys, "mute", "--config", str(conf)) == \
        (1, "", "pi2pi mute: error: no call is up (the supervisor of call c9 is gone)")
    assert run_cli(capsys, "volume", "--config", str(conf)) == (0, "speaker volume 100%", "")   # readable
    settings = config.build(supervisor.Settings, supervisor.SECTION, config.load(str(conf)), {})
    with pytest.raises(controls.NoCall, match="no call is up"):
        controls.set_volume(settings, 50)
    with pytest.raises(config.ConfigError, match="volume 300"):   # a bad value first, call or no call
        controls.set_volume(settings, 300)


# ----- unit tests: the level ramp --------------------------------------------------------


def test_the_level_moves_by_a_ramp_and_a_steady_level_costs_nothing() -> None:
    tone = (np.sin(2 * np.pi * 440 * np.arange(960 * 3) / RATE) * 20000).astype(np.int16)
    frames = [tone[i:i + 960] for i in range(0, tone.size, 960)]
    gain = Gain(channels=1)
    assert gain.apply(frames[0], 1.0) is frames[0]               # untouched at 100 %
    out = np.concatenate([gain.apply(frames[1], 0.5), gain.apply(frames[2], 0.5)])
    assert analysis.hard_cuts(np.concatenate([frames[0], out]), RATE) == []   # no click at the change
    assert np.abs(out[960:].astype(int) - np.rint(frames[2] * 0.5)).max() <= 1
    loud = Gain(channels=1).apply(frames[0], 2.0)
    assert loud.dtype == np.int16 and loud.max() == 32767 and loud.min() == -32768   # clipped, not wrapped
    mic = Gain(channels=2)
    stereo = np.repeat(frames[0], 2).astype("<i2").tobytes()
    faded = np.frombuffer(mic.apply_bytes(stereo, 0.0), dtype="<i2").reshape(-1, 2)
    assert (faded[:, 0] == faded[:, 1]).all() and faded[-1].tolist() == [0, 0]   # both channels, to zero
    assert mic.apply_bytes(stereo, 0.0) == bytes(len(stereo))    # then exact zeros: silence is encoded
