"""`fab stats`: a call's figures per direction, from the stats both Pis wrote;
`fab stats --list`: every call recorded here, a line each.

A direction pairs one side's sender with the other side's receiver:

    video_natpi_to_gwpi   natpi camera -> gwpi viewer
    video_gwpi_to_natpi   gwpi camera  -> natpi viewer
    audio_natpi_to_gwpi   natpi talk   -> gwpi listen
    audio_gwpi_to_natpi   gwpi talk    -> natpi listen

`in_flight` is what the sender sent that the receiver never read: with the
hang-up's order (senders first, receivers drain) it is 0 on a healthy link.
`adapt` is what a camera did to follow the link (docs/video.md, "Adaptive
quality"): its moves and the size, quality and frame rate it ended at.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from controller import store

DIRECTIONS = {
    "video_natpi_to_gwpi": ("video", "natpi", "gwpi"),
    "video_gwpi_to_natpi": ("video", "gwpi", "natpi"),
    "audio_natpi_to_gwpi": ("audio", "natpi", "gwpi"),
    "audio_gwpi_to_natpi": ("audio", "gwpi", "natpi"),
}
PROGRAMS = {"video": ("camera", "viewer"), "audio": ("talk", "listen")}


class NoStats(Exception):
    """No such call here, or nothing fetched for it."""


def read(path: Path) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def side_dirs(call_id: str) -> Dict[str, Path]:
    """Each side's fetched directory, keyed by side (from its summary, else the record's hosts)."""
    control = store.control(call_id)
    hosts = {host: side for side, host in control.get("hosts", {}).items()}
    found = {}
    for path in sorted(p for p in store.call_dir(call_id).iterdir() if p.is_dir()):
        side = (read(path / "summary.json") or {}).get("side") or hosts.get(path.name)
        if side:
            found[side] = path
    return found


def direction(kind: str, sender_dir: Optional[Path], receiver_dir: Optional[Path],
              sender_host: str, receiver_host: str) -> Dict[str, Any]:
    sender_name, receiver_name = PROGRAMS[kind]
    s = read(sender_dir / f"{sender_name}.json") if sender_dir else None
    r = read(receiver_dir / f"{receiver_name}.json") if receiver_dir else None
    missing = [f"{host}/{name}.json" for host, name, rec in
               ((sender_host, sender_name, s), (receiver_host, receiver_name, r)) if rec is None]
    s, r = s or {}, r or {}
    count = "frames" if kind == "video" else "packets"
    sent = s.get(count)
    received = r.get("received") if kind == "video" else r.get("packets")
    row = {
        "sender": f"{sender_host} {sender_name}", "receiver": f"{receiver_host} {receiver_name}",
        "duration_s": max([v for v in (s.get("duration_s"), r.get("duration_s")) if v is not None], default=None),
        "sent": sent,
        "received": received,
        "shown" if kind == "video" else "played": r.get("frames") if kind == "video" else r.get("frames_played"),
        "in_flight": sent - received if sent is not None and received is not None else None,
        "fps": r.get("fps") if kind == "video" else None,
        "kbps": r.get("kbps"),
        "bytes": r.get("bytes"),   # what the receiver read off the wire
        "dropped": {"sender": s.get("dropped"), "receiver": r.get("dropped")},
        "latency_ms": r.get("latency_ms") if kind == "video" else None,
        "buffer_ms": r.get("buffer_ms") if kind == "audio" else None,
        "underruns": r.get("underruns") if kind == "audio" else None,
        "concealed": r.get("concealed") if kind == "audio" else None,
        "reconnects": {"sender": s.get("reconnects"), "receiver": r.get("reconnects")},
        "refused": {"sender": _refused(s), "receiver": _refused(r)},
        "ended": {"sender": s.get("reason"), "receiver": r.get("reason")},
        "adapt": adapt_summary(s) if kind == "video" else None,
        "missing": missing,
    }
    return row


def adapt_summary(camera: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What the camera did to follow the link; None from a camera that does not say."""
    if "adapt" not in camera:
        return None
    return {"on": camera["adapt"], "moves": camera.get("adaptations"), "downs": camera.get("adapt_downs"),
            "ups": camera.get("adapt_ups"), "size": camera.get("adapt_size"),
            "quality": camera.get("adapt_quality"), "fps": camera.get("adapt_fps")}


def adapt_line(name: str, adapt: Optional[Dict[str, Any]]) -> Optional[str]:
    """A line under the table for a camera that moved: a picture below what was asked for shows."""
    if not adapt or not adapt.get("moves"):
        return None
    kind, sender, receiver = DIRECTIONS[name]
    ended = [adapt["size"] or "", f"quality {adapt['quality']}" if adapt.get("quality") is not None else "",
             f"{adapt['fps']:g} fps" if adapt.get("fps") is not None else ""]
    return (f"{kind} {sender} -> {receiver}: the camera followed the link, {adapt['moves']} moves "
            f"({adapt['downs']} down, {adapt['ups']} up); it ended at {', '.join(e for e in ended if e)}")


def _refused(record: Dict[str, Any]) -> Optional[int]:
    if not record:
        return None
    return int(record.get("refused") or 0) + int(record.get("unproven") or 0)


def resolve(call_id: Optional[str] = None) -> str:
    """The call asked for (default: the last one recorded), or NoStats saying what is there."""
    calls = store.calls()
    if call_id is None:
        if not calls:
            raise NoStats(f"no calls recorded in {store.root()} yet: `fab call`, then `fab hangup`")
        return calls[-1]
    if call_id not in calls:
        raise NoStats(f"no call {call_id} in {store.root()} (known: {', '.join(calls[-5:]) or 'none'})")
    return call_id


def call_stats(call_id: Optional[str] = None) -> Dict[str, Any]:
    """{"call": id, "control": what fab recorded, "directions": {direction: figures}}."""
    call_id = resolve(call_id)
    control = store.control(call_id)
    dirs = side_dirs(call_id)
    if not dirs:
        raise NoStats(f"call {call_id}: nothing fetched from the Pis yet (`fab hangup` fetches it)")
    media = control.get("media", "both")
    kinds = ("video", "audio") if media == "both" else (media,)
    directions = {}
    for name, (kind, sender, receiver) in DIRECTIONS.items():
        if kind in kinds:
            hosts = control.get("hosts", {})
            directions[name] = direction(kind, dirs.get(sender), dirs.get(receiver),
                                         hosts.get(sender, sender), hosts.get(receiver, receiver))
    return {"call": call_id, "control": control, "directions": directions}


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sum(pair: Dict[str, Any]) -> Optional[int]:
    values = [v for v in pair.values() if v is not None]
    return sum(values) if values else None


def table(stats: Dict[str, Any]) -> List[str]:
    control = stats["control"]
    head = f"call {stats['call']}"
    details = [f"{control['transport']} transport" if control.get("transport") else "",
               f"set up in {control['call_setup_s']:.1f} s" if control.get("call_setup_s") is not None else "",
               f"hung up in {control['hangup_s']:.1f} s" if control.get("hangup_s") is not None else ""]
    details = [d for d in details if d]
    lines = [head + (f" ({', '.join(details)})" if details else "")]
    columns = ("direction", "time s", "sent", "recvd", "in flight", "drops", "fps", "kbps",
               "latency p50/p95/p99 ms", "underruns", "reconn", "ended (sender / receiver)")
    rows = []
    for name, d in stats["directions"].items():
        kind, sender, receiver = DIRECTIONS[name]
        latency = d["latency_ms"] or {}
        rows.append((
            f"{kind} {sender} -> {receiver}", _fmt(d["duration_s"], 1), _fmt(d["sent"]), _fmt(d["received"]),
            _fmt(d["in_flight"]), _fmt(_sum(d["dropped"])), _fmt(d["fps"], 1), _fmt(d["kbps"], 1),
            "/".join(_fmt(latency.get(p), 0) for p in ("p50", "p95", "p99")) if latency else "-",
            _fmt(d["underruns"]), _fmt(_sum(d["reconnects"])),
            f"{d['ended']['sender'] or '-'} / {d['ended']['receiver'] or '-'}"))
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    for name, d in stats["directions"].items():
        moved = adapt_line(name, d.get("adapt"))
        if moved:
            lines.append(moved)
        if d["missing"]:
            lines.append(f"{name}: missing {', '.join(d['missing'])}")
    return lines


# ----- fab stats --list -------------------------------------------------------------

SIDES = ("natpi", "gwpi")
HISTORY = "history.jsonl"   # the supervisor's line a second (runtime/pi2pi/supervisor.py)


def call_record(call_id: str) -> Dict[str, Any]:
    """One call as --list shows it: what fab recorded, and what arrived from each side."""
    control = store.control(call_id)
    dirs = side_dirs(call_id) if store.call_dir(call_id).is_dir() else {}
    summaries = [read(path / "summary.json") or {} for path in dirs.values()]
    durations = [s["duration_s"] for s in summaries if isinstance(s.get("duration_s"), (int, float))]
    duration = max(durations) if durations else None
    if duration is None and control.get("started") and control.get("hung_up"):
        duration = round(control["hung_up"] - control["started"], 3)   # fab's clock: nothing fetched
    missing: List[str] = []
    if dirs:
        for d in call_stats(call_id)["directions"].values():
            missing += [m for m in d["missing"] if m not in missing]
    return {
        "call": call_id, "media": control.get("media"), "transport": control.get("transport"),
        "duration_s": duration, "call_setup_s": control.get("call_setup_s"), "hangup_s": control.get("hangup_s"),
        "fetched": [side for side in SIDES if side in dirs],
        "missing": missing,
        "complete": len([s for s in SIDES if s in dirs]) == len(SIDES) and not missing,
        "history": [side for side in SIDES if side in dirs and (dirs[side] / HISTORY).is_file()],
    }


def call_list() -> List[Dict[str, Any]]:
    """Every call recorded here, oldest first (so the newest is last, next to the prompt)."""
    return [call_record(call_id) for call_id in store.calls()]


def duration(seconds: Optional[float]) -> str:
    """12.3 s under a minute, else H:MM:SS."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _sides(found: List[str]) -> str:
    if len(found) == len(SIDES):
        return "both"
    return f"{found[0]} only" if found else "none"


def list_lines(records: List[Dict[str, Any]]) -> List[str]:
    """`fab stats --list`: a header, then a line per call, newest last."""
    if not records:
        return [f"no calls recorded in {store.root()} yet: `fab call`, then `fab hangup`"]
    columns = ("call", "media", "transport", "duration", "set up s", "hang-up s", "stats", "history")
    rows = []
    for r in records:
        if not r["fetched"]:
            arrived = "none fetched"
        elif len(r["fetched"]) < len(SIDES):
            arrived = _sides(r["fetched"])
        elif r["missing"]:
            more = len(r["missing"]) - 2
            arrived = "missing " + ", ".join(r["missing"][:2]) + (f" and {more} more" if more > 0 else "")
        else:
            arrived = "both sides"
        rows.append((r["call"], r["media"] or "-", r["transport"] or "-", duration(r["duration_s"]),
                     _fmt(r["call_setup_s"], 1), _fmt(r["hangup_s"], 1), arrived, _sides(r["history"])))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return lines
