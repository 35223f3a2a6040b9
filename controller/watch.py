"""`fab watch`: the call's figures per direction, live, refreshed each second.

Each Pi's `pi2pi status --json` carries its programs' live snapshots
(`<program>.live.json`, schema pi2pi.live/1: cumulative counters and the time
they were read). Rates come from two successive snapshots of the *receiving*
program (what arrives is what a user sees and hears). A program writes its
snapshot about once a second, so a look a second after the last may find the
same one again: `Earlier` keeps, per program, the last snapshot older than the
newest, and rates are taken against that.

    fps        pictures painted per second          viewer frames
    kbps       bytes read off the wire              viewer / listen bytes
    latency    capture to paint of the picture on the screen (ms)
    drops      frames or packets dropped so far, sender + receiver
    buffer     listen's jitter buffer fill (ms), underruns so far
    reconn     reconnections so far, sender + receiver

A direction whose ends are not both connected shows why instead of figures
(controller.call.media_state).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from controller.call import DIRECTIONS

Snapshot = Dict[str, Dict[str, Any]]   # side -> program -> its status (live fields included)


def programs(calls: Dict[str, Optional[Dict[str, Any]]]) -> Snapshot:
    """Each side's programs from its `pi2pi status` call record."""
    return {side: dict((call or {}).get("programs", {})) for side, call in calls.items()}


class Earlier:
    """Per program, the snapshot before its newest one (told apart by their `at`)."""

    def __init__(self) -> None:
        self.newest: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.before: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def update(self, now: Snapshot) -> Snapshot:
        """Take in a look; what its rates are measured against."""
        for side, records in now.items():
            for name, record in records.items():
                key = (side, name)
                newest = self.newest.get(key)
                if newest is None or record.get("at") != newest.get("at"):
                    if newest is not None:
                        self.before[key] = newest
                    self.newest[key] = record
        return {side: {name: self.before[(side, name)] for name in records if (side, name) in self.before}
                for side, records in now.items()}


def rate(now: Dict[str, Any], before: Optional[Dict[str, Any]], key: str, scale: float = 1.0) -> Optional[float]:
    """(now[key] - before[key]) per second of the snapshots' own clock, times scale."""
    if not before or now.get(key) is None or before.get(key) is None:
        return None
    elapsed = float(now.get("at", 0)) - float(before.get("at", 0))
    if elapsed <= 0 or now[key] < before[key]:   # the same snapshot, or a restarted program
        return None
    return (now[key] - before[key]) * scale / elapsed


def figures(now: Snapshot, before: Optional[Snapshot]) -> Dict[str, Dict[str, Any]]:
    """Per direction: rates between the two snapshots and the counters so far."""
    rows: Dict[str, Dict[str, Any]] = {}
    for direction, ((s_side, s_name), (r_side, r_name)) in DIRECTIONS.items():
        sender = now.get(s_side, {}).get(s_name)
        receiver = now.get(r_side, {}).get(r_name)
        if sender is None and receiver is None:
            continue
        sender, receiver = sender or {}, receiver or {}
        earlier = (before or {}).get(r_side, {}).get(r_name)
        video = r_name == "viewer"
        rows[direction] = {
            "fps": rate(receiver, earlier, "frames") if video else None,
            "kbps": rate(receiver, earlier, "bytes", 8 / 1000),
            "latency_ms": receiver.get("latency_ms") if video else None,
            "drops": int(sender.get("dropped") or 0) + int(receiver.get("dropped") or 0),
            "buffer_ms": None if video else receiver.get("fill_ms"),
            "underruns": None if video else receiver.get("underruns"),
            "reconnects": int(sender.get("reconnects") or 0) + int(receiver.get("reconnects") or 0),
        }
    return rows


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


HEADER = f"{'direction':<22}{'fps':>6}{'kbps':>8}{'latency ms':>12}{'drops':>7}{'buffer ms':>11}{'underruns':>11}{'reconn':>8}"


def table(rows: Dict[str, Dict[str, Any]], media: Dict[str, Dict[str, Any]]) -> List[str]:
    """The watch's lines: a header, then a row per direction (or why it is down)."""
    lines = [HEADER]
    for direction in DIRECTIONS:
        if direction not in rows and direction not in media:
            continue
        state = media.get(direction, {})
        if state and not state.get("up"):
            lines.append(f"{direction:<22}DOWN: {'; '.join(state.get('why', []))}")
            continue
        r = rows.get(direction, {})
        lines.append(f"{direction:<22}{_cell(r.get('fps'), 1):>6}{_cell(r.get('kbps'), 0):>8}"
                     f"{_cell(r.get('latency_ms'), 0):>12}{_cell(r.get('drops')):>7}{_cell(r.get('buffer_ms'), 0):>11}"
                     f"{_cell(r.get('underruns')):>11}{_cell(r.get('reconnects')):>8}")
    return lines
