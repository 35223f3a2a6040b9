"""A program's run: stop requests, the maximum duration, and stats at the end.

Every program runs inside `ProgramRun`: SIGINT, SIGTERM and SIGHUP set its stop
event instead of killing it mid-write, the maximum duration ends it, and the
stats file is written when the block exits, whatever ended it (a stop request,
the duration, the peer, an error).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Optional

from pi2pi import stats

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ProgramRun:
    def __init__(
        self,
        program: str,
        stats_dir: Path,
        duration_s: float,
        snapshot: Callable[[], Dict[str, Any]],
    ) -> None:
        self.program = program
        self.stats_dir = stats_dir
        self.duration_s = duration_s
        self.snapshot = snapshot          # the program's own fields, read at the end
        self.stop = threading.Event()     # wait on this instead of sleeping
        self.reason: Optional[str] = None
        self.started = time.time()
        self.deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        self.stats_path: Optional[Path] = None
        self._previous: Dict[int, Any] = {}

    def end(self, reason: str) -> None:
        """Ask the program to stop; the first reason given is the one recorded."""
        if self.reason is None:
            self.reason = reason
        self.stop.set()

    def should_stop(self) -> bool:
        if not self.stop.is_set() and time.monotonic() >= self.deadline:
            self.end("duration reached")
        return self.stop.is_set()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _on_signal(self, signum: int, _frame: Optional[FrameType]) -> None:
        self.end(f"signal {signal.Signals(signum).name}")

    def __enter__(self) -> "ProgramRun":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> bool:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if exc_type is not None and self.reason is None:
            self.reason = "interrupted" if exc_type is KeyboardInterrupt else f"error: {exc}"
        try:
            fields = self.snapshot()
        except Exception as err:  # stats must still be written
            log.exception("collecting stats failed")
            fields = {"stats_error": str(err)}
        record = stats.build(self.program, self.started, time.time(), self.reason or "ended", fields)
        try:
            self.stats_path = stats.write(self.stats_dir, record)
            log.info("stats written to %s (%s)", self.stats_path, record["reason"])
        except OSError as err:
            log.error("cannot write stats to %s: %s", self.stats_dir, err)
        return False
