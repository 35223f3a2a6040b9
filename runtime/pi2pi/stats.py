"""One versioned stats schema for every pi2pi program.

A program's stats are a flat JSON object: the common fields below plus the
program's own counters. It is written once, when the program stops, however it
stops, atomically (temp file + rename) so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SCHEMA = "pi2pi.stats/1"
COMMON_FIELDS = ("schema", "program", "host", "started", "ended", "duration_s", "reason")


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> Dict[str, Optional[float]]:
    """Nearest-rank percentiles, rounded to 0.01; None when there are no samples."""
    if not samples:
        return {f"p{p}": None for p in points}
    ordered = sorted(samples)
    out: Dict[str, Optional[float]] = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil without floats
        out[f"p{p}"] = round(ordered[rank - 1], 2)
    return out


class Samples:
    """A bounded reservoir of measurements (ms), so a 3-hour call keeps its memory flat.

    The reservoir is allocated whole when it is made (8 bytes a value, 160 kB at
    the default limit), so a program's memory does not creep up while it fills
    (a list of float objects grew 32 bytes a value for the first 20 000 frames:
    22 minutes at 15 fps, which a soak reads as a leak).
    """

    def __init__(self, limit: int = 20000) -> None:
        self.limit = limit
        self._store = array("d", bytes(8 * limit))
        self.seen = 0

    @property
    def values(self) -> Sequence[float]:
        """The values kept (all of them until the limit, then a uniform sample)."""
        return self._store[:min(self.seen, self.limit)]

    def add(self, value: float) -> None:
        if self.seen < self.limit:
            self._store[self.seen] = value
        else:  # keep a uniform sample of everything seen (reservoir sampling)
            slot = int.from_bytes(os.urandom(4), "little") % (self.seen + 1)
            if slot < self.limit:
                self._store[slot] = value
        self.seen += 1

    def summary(self) -> Dict[str, Optional[float]]:
        return percentiles(self.values)


def stream_rates(
    count: int, nbytes: int, first_at: Optional[float], last_at: Optional[float], started_at: float
) -> Dict[str, float]:
    """fps and kbps over the time the stream flowed (first to last item, monotonic
    seconds), so waiting for the peer does not dilute them; else over the whole run."""
    streaming = last_at - first_at if first_at is not None and last_at is not None and count > 1 else 0.0
    window = streaming if streaming > 0 else max(time.monotonic() - started_at, 1e-9)
    return {
        "fps": round((count - 1 if streaming > 0 else count) / window, 2),
        "kbps": round(nbytes * 8 / 1000 / window, 1),
    }


def build(program: str, started: float, ended: float, reason: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    record: Dict[str, Any] = {
        "schema": SCHEMA,
        "program": program,
        "host": socket.gethostname(),
        "started": iso_utc(started),
        "ended": iso_utc(ended),
        "duration_s": round(ended - started, 3),
        "reason": reason,
    }
    for key, value in fields.items():
        if key in COMMON_FIELDS:
            raise ValueError(f"stats field {key!r} is reserved")
        record[key] = value
    return record


def write_json(target: Path, record: Dict[str, Any], durable: bool = True) -> Path:
    """Write one JSON object atomically (temp file + rename): a reader never sees half
    of it. durable: fsync before the rename (stats; a live snapshot need not)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write(directory: Path, record: Dict[str, Any]) -> Path:
    """Write DIR/<program>.json atomically and return its path."""
    return write_json(directory / f"{record['program']}.json", record)


def read_dir(directory: Path) -> List[Dict[str, Any]]:
    """Every stats record in DIR, skipping files of another schema."""
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            records.append(record)
    return records
