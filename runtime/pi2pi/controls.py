"""Controls of the call that is up: mute the microphone, set the speaker volume.

The controls live in one small JSON file, `controls.json`, in the programs'
stats directory (a call's directory: the supervisor starts every program with
`--stats <call dir>`):

    {"schema": "pi2pi.controls/1", "muted": false, "volume": 100}

- `muted`: talk keeps its connection and keeps sending 20 ms packets in real
  time, of silence (it encodes zeros), so the far jitter buffer and the stats
  see an ordinary stream.
- `volume`: percent, 0..200 (100: as received); listen scales the decoded PCM
  before it is played and recorded (what is heard is what is recorded).

Writers (`pi2pi mute`, `pi2pi volume`, the touch panel through `set_muted`,
`set_volume`, `current`) replace the file atomically (stats.write_json), one at a
time (a lock in the call directory, so a toggle is never lost between two
writers). The programs look at the file's stat at most every CHECK_EVERY_S from
a loop they already run (`Watch`), and read it only when it changed: a change
is heard within about 0.1 s plus the audio path's own delay. No file (a
program run by hand, or a call nobody touched) means the defaults: as before.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from pi2pi import config, stats, supervisor
from pi2pi.config import ConfigError

log = logging.getLogger(__name__)

FILE = "controls.json"
LOCK = ".controls.lock"
SCHEMA = "pi2pi.controls/1"
VOLUME_MAX = 200
CHECK_EVERY_S = 0.1       # how often a program looks at the file's stat (a change is noticed this soon)
MUTE_CHOICES = ("on", "off", "toggle")
COMMANDS = ("mute", "volume")


class NoCall(supervisor.CallError):
    """There is no call up on this Pi to control."""


@dataclass(frozen=True)
class Controls:
    muted: bool = False      # talk sends silence
    volume: int = 100        # percent of the decoded level listen plays; 100 = as received

    def validate(self) -> None:
        if not isinstance(self.muted, bool):
            raise ConfigError(f"muted {self.muted!r}: want true or false")
        if isinstance(self.volume, bool) or not isinstance(self.volume, int):
            raise ConfigError(f"volume {self.volume!r}: want a whole percentage 0..{VOLUME_MAX}")
        if not 0 <= self.volume <= VOLUME_MAX:
            raise ConfigError(f"volume {self.volume}: want 0..{VOLUME_MAX} percent (100 = as received)")


# ----- the file -------------------------------------------------------------------------


def read(directory: Path) -> Controls:
    """The controls in `directory`; the defaults when it has no controls file."""
    path = Path(directory) / FILE
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return Controls()
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot be read as JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: want a JSON object, not {type(value).__name__}")
    # Keys this version does not know (a newer writer's) are left alone, not refused.
    known = {f.name: value[f.name] for f in dataclasses.fields(Controls) if f.name in value}
    controls = Controls(**known)
    try:
        controls.validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return controls


def write(directory: Path, controls: Controls) -> Path:
    """Replace the controls file atomically. Not fsynced: it matters only while the
    call runs, and an fsync on a Pi's SD card can take longer than the change may."""
    controls.validate()
    record = {"schema": SCHEMA, **dataclasses.asdict(controls)}
    return stats.write_json(Path(directory) / FILE, record, durable=False)


class Watch:
    """A program's view of the controls: `poll()` from any loop, as often as it likes.

    It looks at the file's stat at most every `every_s` and reads the file only
    when its identity (inode, mtime, size) changed; an atomic replace always
    gives a new inode. A file that cannot be read or holds a bad value is logged
    and the last good controls stay: a slip of a writer never ends a call.
    """

    def __init__(self, directory: Path, every_s: float = CHECK_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(directory) / FILE
        self.every_s = every_s
        self.clock = clock
        self.controls = Controls()
        self._seen: Optional[Tuple[int, int, int]] = None   # the identity of the file last read; None: no file
        self._next = 0.0

    def poll(self) -> Controls:
        now = self.clock()
        if now < self._next:
            return self.controls
        self._next = now + self.every_s
        try:
            st = os.stat(self.path)
            identity: Optional[Tuple[int, int, int]] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            identity = None
        except OSError as err:
            log.warning("cannot look at %s: %s; controls left as they are", self.path, err)
            return self.controls
        if identity == self._seen:
            return self.controls
        self._seen = identity
        try:
            new = read(self.path.parent) if identity is not None else Controls()
        except ConfigError as err:
            log.warning("%s; controls left as they are", err)
            return self.controls
        if new != self.controls:
            log.info("controls: muted %s, volume %d%%", "yes" if new.muted else "no", new.volume)
            self.controls = new
        return self.controls


# ----- the call that is up (the panel's functions) --------------------------------------


def call_dir(settings: supervisor.Settings, to_change: bool = True) -> Path:
    """The directory of the call that is up on this Pi (current.json); NoCall when there is none.

    A call whose supervisor died is still named until `down` or `up` clears it
    (as `pi2pi status` shows it): its controls can be read, but changing them
    would change nothing, so that is refused."""
    record = supervisor.current(settings)
    if record is None:
        raise NoCall("no call is up")
    if to_change and not record["alive"]:
        raise NoCall(f"no call is up (the supervisor of call {record['call']} is gone)")
    return settings.calls_dir() / str(record["call"])


class _Locked:
    """One writer of a call's controls at a time (flock), so a toggle is never lost."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        self.fd = -1

    def __enter__(self) -> "_Locked":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *_exc: Any) -> None:
        os.close(self.fd)


def change(directory: Path, update: Callable[[Controls], Controls]) -> Controls:
    """Read, update and write the controls in `directory` as one step; the new controls."""
    with _Locked(directory):
        new = update(read(directory))
        write(directory, new)
    return new


def current(settings: supervisor.Settings) -> Controls:
    """The controls of the call that is up."""
    return read(call_dir(settings, to_change=False))


def set_muted(settings: supervisor.Settings, on: bool) -> Controls:
    """Mute (on=True) or unmute the microphone of the call that is up."""
    return change(call_dir(settings), lambda c: dataclasses.replace(c, muted=bool(on)))


def toggle_muted(settings: supervisor.Settings) -> Controls:
    return change(call_dir(settings), lambda c: dataclasses.replace(c, muted=not c.muted))


def set_volume(settings: supervisor.Settings, percent: int) -> Controls:
    """Set the speaker volume (0..200 %) of the call that is up; ConfigError when out of range."""
    Controls(volume=percent).validate()   # a bad value is the caller's mistake, call or no call
    return change(call_dir(settings), lambda c: dataclasses.replace(c, volume=percent))


# ----- the command line -----------------------------------------------------------------


def parse_volume(text: str) -> int:
    """A percentage as a person types it ("50", "50%"); ConfigError otherwise."""
    digits = text.strip().rstrip("%").strip()
    try:
        percent = int(digits)
    except ValueError:
        raise ConfigError(f"volume {text!r}: want a whole percentage 0..{VOLUME_MAX}") from None
    Controls(volume=percent).validate()
    return percent


def parse_mute(text: Optional[str]) -> str:
    choice = (text or "toggle").strip().lower()
    if choice not in MUTE_CHOICES:
        raise ConfigError(f"mute {text!r}: want {', '.join(MUTE_CHOICES)}")
    return choice


def add_commands(commands: Any) -> None:
    # The values are checked here, not by argparse, so a bad one is one line and exit 2.
    p = commands.add_parser("mute", help="mute or unmute the microphone of the call that is up here")
    p.add_argument("state", nargs="?", metavar="on|off|toggle", help="(default: toggle)")
    p = commands.add_parser("volume", help="the speaker volume of the call that is up here, percent")
    p.add_argument("percent", nargs="?", metavar="PERCENT",
                   help=f"0..{VOLUME_MAX} (100 = as received); none: print the current volume")
    for name in COMMANDS:
        commands.choices[name].add_argument("--config", metavar="PATH")


def describe(name: str, controls: Controls) -> str:
    """The answer of `pi2pi mute` or `pi2pi volume`, for a person."""
    if name == "mute":
        return f"microphone {'muted' if controls.muted else 'on'}"
    return f"speaker volume {controls.volume}%"


def command(args: argparse.Namespace) -> int:
    """`pi2pi mute [on|off|toggle]`, `pi2pi volume [PERCENT]`: 0, 1 (no call is up); ConfigError: 2."""
    if args.command == "mute":
        choice = parse_mute(args.state)
        percent = None
    else:
        choice = None
        percent = parse_volume(args.percent) if args.percent is not None else None
    settings = config.build(supervisor.Settings, supervisor.SECTION, config.load(args.config), {})
    settings.validate()
    try:
        if choice == "toggle":
            controls = toggle_muted(settings)
        elif choice is not None:
            controls = set_muted(settings, choice == "on")
        elif percent is not None:
            controls = set_volume(settings, percent)
        else:
            controls = current(settings)
    except NoCall as err:
        print(f"pi2pi {args.command}: error: {err}", file=sys.stderr)
        return 1
    print(describe(args.command, controls))
    return 0
