"""`fab stats --plot FILE.png`: a call drawn afterwards, from both Pis' history.

While a call runs, each Pi's supervisor appends a line a second to
`history.jsonl` in its call directory (runtime/pi2pi/supervisor.py):

    {"at": <unix time>, "programs": {"<program>": <its pi2pi.live/1 snapshot>, ...}}

and `fab hangup` fetches it with the stats. Each side's line holds its own
programs only, so the two histories are merged by time into snapshots keyed by
side, as `fab watch` sees the call, and each direction's figures come from
`watch.figures` over two successive snapshots (rates from the *receiver's* own
counters and timestamps, so the two Pis' lines need not be paired exactly).

Four panels over the call's time, a line per direction:

    fps         pictures painted per second (video, both ways)
    kbps        bytes read off the wire (all four directions)
    latency     capture to paint of the picture shown (ms, video)
    buffer      listen's jitter buffer fill (ms, audio)

`series` (the numbers) is pure and testable alone; `draw` (the picture) uses
matplotlib's Agg backend, with no display and no pyplot state.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from controller import report, store, watch
from controller.call import DIRECTIONS, SIDES

HISTORY = report.HISTORY
PAIR_S = 0.6              # two sides' lines this close are one moment: each side writes one a second,
                          # so a partner is always this near, even with the two phases half a second apart
SIZE_PX = (1200, 1000)    # the PNG's width and height
DPI = 100
MINUTES_AFTER_S = 1200    # a longer call is drawn over minutes instead of seconds

Record = Dict[str, Any]   # one line of history: {"at": ..., "programs": {...}}
FIELDS = ("at", "frames", "bytes", "latency_ms", "fill_ms", "underruns", "dropped", "reconnects")  # watch's
VIDEO = [d for d in DIRECTIONS if d.startswith("video")]
AUDIO = [d for d in DIRECTIONS if d.startswith("audio")]
PANELS = (   # (figure in watch.figures, axis label, directions, what is said when none is in the call)
    ("fps", "fps (frames/s)", VIDEO, "no video in this call"),
    ("kbps", "kbps received (kbit/s)", list(DIRECTIONS), "no media in this call"),
    ("latency_ms", "video latency (ms)", VIDEO, "no video in this call"),
    ("buffer_ms", "audio buffer (ms)", AUDIO, "no audio in this call"),
)


class CannotPlot(Exception):
    """No history to draw (a call from before it, a side whose files did not arrive), or no picture."""


def read_history(path: Path) -> Iterator[Record]:
    """A history file's lines in the order written (time order), each program's snapshot
    cut down to what the figures use (a day of history stays a few MB in memory, read
    line by line); a line that is not a record (cut short by a full disk or a killed
    supervisor) is skipped."""
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not (isinstance(record, dict) and isinstance(record.get("at"), (int, float))
                    and isinstance(record.get("programs"), dict)):
                continue
            yield {"at": record["at"],
                   "programs": {name: {k: snapshot[k] for k in FIELDS if k in snapshot}
                                for name, snapshot in record["programs"].items() if isinstance(snapshot, dict)}}


def merge(histories: Dict[str, Iterable[Record]]) -> Iterator[Tuple[float, Dict[str, Optional[Record]]]]:
    """The two sides' lines merged by time: (at, {side: its line or None}), one per
    moment. Lines within PAIR_S of each other are paired; a line without a partner (a
    side's missing second, or a side up before the other) stands alone."""
    first, second = SIDES
    lines = {side: iter(histories.get(side, ())) for side in SIDES}
    heads = {side: next(lines[side], None) for side in SIDES}
    while heads[first] is not None or heads[second] is not None:
        a, b = heads[first], heads[second]
        if a is not None and b is not None and abs(a["at"] - b["at"]) <= PAIR_S:
            yield min(a["at"], b["at"]), {first: a, second: b}
            taken = SIDES
        elif b is None or (a is not None and a["at"] < b["at"]):
            yield a["at"], {first: a, second: None}
            taken = (first,)
        else:
            yield b["at"], {first: None, second: b}
            taken = (second,)
        for side in taken:
            heads[side] = next(lines[side], None)


def series(histories: Dict[str, Iterable[Record]]) -> Dict[str, Any]:
    """The numbers behind the picture, a point per merged moment:

        {"start": unix time of the first, "t": [seconds since it], "lines": {side: its lines},
         "fps" | "kbps" | "latency_ms" | "buffer_ms": {direction: [value or None per point]}}

    A panel holds the directions of the call that it draws (fps and latency: video;
    buffer: audio; kbps: all). A side missing at a moment keeps its last line. A
    receiver's snapshot that did not change since the last line (a program writes its
    snapshot about once a second, so a line now and then repeats it) is measured
    against the one before it: its rate repeats instead of leaving a gap.
    """
    kept: Dict[str, Dict[str, Any]] = {side: {} for side in SIDES}       # each side's latest programs
    previous: Dict[str, Dict[str, Any]] = {side: {} for side in SIDES}   # each program's last snapshot
    before: Dict[str, Dict[str, Any]] = {side: {} for side in SIDES}     # ... and the last one older than it
    start: Optional[float] = None
    t: List[float] = []
    counted = {side: 0 for side in SIDES}
    present: Set[str] = set()   # the directions seen at least once
    found: Dict[str, Any] = {key: {d: [] for d in directions} for key, _label, directions, _none in PANELS}
    for at, lines in merge(histories):
        for side, line in lines.items():
            if line is not None:
                kept[side] = line["programs"]
                counted[side] += 1
        now = {side: dict(kept[side]) for side in SIDES}
        for side in SIDES:
            for name, snapshot in now[side].items():
                last = previous[side].get(name)
                if last is not None and last.get("at") != snapshot.get("at"):
                    before[side][name] = last
                previous[side][name] = snapshot
        row = watch.figures(now, {side: dict(before[side]) for side in SIDES})
        present.update(row)
        start = at if start is None else start
        t.append(round(at - start, 3))
        for key, values in found.items():
            for direction, points in values.items():
                points.append(row.get(direction, {}).get(key))
    for values in found.values():   # the directions this call did not have (video-only, audio-only)
        for direction in [d for d in values if d not in present]:
            del values[direction]
    return {"start": start, "t": t, "lines": counted, **found}


def histories(call_id: str) -> Dict[str, Path]:
    """Both sides' history files of a fetched call, or CannotPlot naming each side's missing part."""
    dirs = report.side_dirs(call_id)
    if not dirs:
        raise CannotPlot(f"call {call_id}: nothing fetched from the Pis (`fab hangup` fetches it)")
    hosts = store.control(call_id).get("hosts", {})
    found: Dict[str, Path] = {}
    problems = []
    for side in SIDES:
        host = hosts.get(side, side)
        named = side if host == side else f"{side} ({host})"
        if side not in dirs:
            problems.append(f"nothing arrived from {named}: it was not reached at hang-up")
            continue
        path = dirs[side] / HISTORY
        try:
            first = next(read_history(path), None)
        except FileNotFoundError:
            problems.append(f"no history from {named}: {path} is missing (a call from before "
                            f"per-second history, or {side} runs an older pi2pi)")
            continue
        except OSError as err:
            problems.append(f"cannot read {path}: {err.strerror or err}")
            continue
        if first is None:
            problems.append(f"{named}'s history {path} holds no line")
        found[side] = path
    if problems:
        raise CannotPlot(f"call {call_id}: cannot draw it: {'; '.join(problems)}")
    return found


def draw(data: Dict[str, Any], title: str, path: Optional[Path] = None,
         size_px: Tuple[int, int] = SIZE_PX) -> Any:
    """The four panels (a matplotlib Figure), saved as a PNG of size_px at path if given."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CannotPlot("matplotlib is not installed in this venv: `make setup` installs it "
                         "(requirements.txt; on armhf Debian's python3-matplotlib)") from None
    figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    minutes = bool(data["t"]) and data["t"][-1] > MINUTES_AFTER_S
    x = [s / 60 for s in data["t"]] if minutes else list(data["t"])
    colours = {d: f"C{i}" for i, d in enumerate(DIRECTIONS)}
    for ax, (key, label, _directions, none) in zip(axes, PANELS):
        for direction, values in data[key].items():
            ax.plot(x, [math.nan if v is None else v for v in values], label=direction,
                    color=colours[direction], linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if data[key]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
            ax.set_ylim(bottom=0)
        else:
            ax.text(0.5, 0.5, none, transform=ax.transAxes, ha="center", va="center", color="grey")
    axes[-1].set_xlabel("minutes since the call began (min)" if minutes else "seconds since the call began (s)")
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        try:
            figure.savefig(str(path), format="png", dpi=DPI)
        except OSError as err:
            raise CannotPlot(f"cannot write {path}: {err.strerror or err}") from None
    return figure


def plot_call(call_id: Optional[str], path: Path) -> Dict[str, Any]:
    """Draw a recorded call (default: the last) into path; what was drawn."""
    call_id = report.resolve(call_id)
    control = store.control(call_id)
    data = series({side: read_history(path) for side, path in histories(call_id).items()})
    details = []
    if control.get("media"):
        details.append({"both": "video and audio"}.get(control["media"], control["media"]))
    if control.get("transport"):
        details.append(f"{control['transport']} transport")
    if data["start"] is not None:
        details.append("from " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["start"])))
    title = f"call {call_id}" + (f" ({', '.join(details)})" if details else "")
    figure = draw(data, title, path)
    return {"call": call_id, "path": str(path), "points": len(data["t"]),
            "seconds": data["t"][-1] if data["t"] else 0.0,
            "lines": data["lines"], "figure": figure}
