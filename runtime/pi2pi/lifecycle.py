"""A program's run: the one way to stop, the one deadline, worker threads, and stats.

Every program runs inside `ProgramRun`, and `run.stop` is the only thing any of
its loops waits on:

- SIGINT, SIGTERM and SIGHUP set it (instead of killing the program mid-write);
- the maximum duration sets it (a timer: nothing has to poll a clock);
- a worker thread started with `run.worker()` that raises sets it, with the
  error as the run's reason (never a silent hang with a dead thread);
- the program itself ends the run with `run.end(reason)` (peer gone, device
  failed).

The first reason given is the one recorded. When the block exits, whatever
ended it, the stats file is written; the signals stay watched until it is, so
a second SIGTERM meanwhile (`pi2pi down` after a dead supervisor's) loses nothing. With `live`, a snapshot of the program's
cheap counters is published while it runs (`<stats>/<program>.live.json`,
schema `pi2pi.live/1`): at once when its state, peer or flow changes, otherwise
every LIVE_PERIOD_S; the file is removed when the program ends (its stats file
then tells the rest).

A stop request always wins, whatever the peer is doing: no wait on a peer lasts
longer than STOP_POLL_S before it looks at `run.stop` again (dialing and the
handshake in net.py; a frame's bytes, in and out, in wire.py, which raises
wire.Stopped), and a worker thread is waited for at most WORKER_JOIN_S. So
SIGINT/SIGTERM ends every program within 2 s with its stats written, even
half-way through a handshake or a frame, behind a peer that trickles, floods,
or reads nothing while we send.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterable, Optional

from pi2pi import stats

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_POLL_S = 0.2       # the longest any wait on a peer keeps a stop request waiting
WORKER_JOIN_S = 1.0     # the longest a program waits for its worker threads once stopped
LIVE_SCHEMA = "pi2pi.live/1"
LIVE_PERIOD_S = 1.0     # a live snapshot at least this often
LIVE_POLL_S = 0.1       # how soon a change of peer or flow is published
LIVE_EVENTS = ("state", "peer", "flowing")  # live fields whose change is published at once


def _ignore(_signum: int, _frame: Optional[FrameType]) -> None:
    """The Python-level handler: nothing (SignalWatch's thread does the work)."""


class SignalWatch:
    """Signals delivered to `on_signal` by a thread of their own, never inside a handler.

    A Python signal handler runs in the main thread between any two bytecodes, also
    inside `threading.Event.wait` while that holds the Event's lock; a handler that
    sets the Event then waits for its own lock for ever (seen in CI: a camera that
    never ended after SIGTERM). So the handler does nothing: the interpreter's C
    handler writes the signal's number to a pipe (`signal.set_wakeup_fd`), and this
    thread reads it and calls `on_signal` as any other thread would. Outside the
    main thread (where handlers cannot be set) it does nothing.
    """

    def __init__(self, signums: Iterable[int], on_signal: Callable[[int], None]) -> None:
        self.signums = frozenset(int(s) for s in signums)
        self.on_signal = on_signal
        self._previous: Dict[int, Any] = {}
        self._previous_fd = -1
        self._pipe: Optional[tuple] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "SignalWatch":
        if threading.current_thread() is not threading.main_thread():
            return self
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, _ignore)
        self._thread = threading.Thread(target=self._watch, args=(read_end,), name="signals", daemon=True)
        self._thread.start()
        return self

    def _watch(self, read_end: int) -> None:
        while True:
            try:
                numbers = os.read(read_end, 64)
            except OSError:
                return
            if not numbers:   # the write end closed: the watch is over
                return
            for signum in numbers:
                if signum in self.signums:
                    self.on_signal(signum)

    def __exit__(self, *_exc: Any) -> None:
        if self._pipe is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        read_end, write_end = self._pipe
        os.close(write_end)
        if self._thread is not None:
            self._thread.join(timeout=WORKER_JOIN_S)
        os.close(read_end)
        self._pipe = None


class ProgramRun:
    def __init__(
        self,
        program: str,
        stats_dir: Path,
        duration_s: float,
        snapshot: Callable[[], Dict[str, Any]],
        live: Optional[Callable[[], Dict[str, Any]]] = None,
    ) -> None:
        self.program = program
        self.stats_dir = stats_dir
        self.duration_s = duration_s
        self.snapshot = snapshot          # the program's own fields, read at the end
        self.live = live                  # cheap counters, read while it runs
        self.stop = threading.Event()     # wait on this instead of sleeping
        self.reason: Optional[str] = None
        self.started = time.time()
        self.stats_path: Optional[Path] = None
        self.live_path = stats_dir / f"{program}.live.json"
        self._signals = SignalWatch(STOP_SIGNALS, self._on_signal)
        self._deadline: Optional[threading.Timer] = None
        self._publisher: Optional[threading.Thread] = None

    def end(self, reason: str) -> None:
        """Ask the program to stop; the first reason given is the one recorded."""
        if self.reason is None:
            self.reason = reason
        self.stop.set()

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def ended_normally(self) -> bool:
        """Ended by a stop request, the duration or the peer, not by an error."""
        return (self.reason or "").startswith(("signal", "duration", "peer gone"))

    def worker(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Start a thread whose death ends the run, with the error as its reason."""

        def guarded() -> None:
            try:
                target()
            except Exception as err:
                log.exception("the %s thread died", name)
                self.end(f"error: the {name} thread died: {err!r}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _on_signal(self, signum: int) -> None:
        self.end(f"signal {signal.Signals(signum).name}")

    def __enter__(self) -> "ProgramRun":
        self._signals.__enter__()
        if self.duration_s > 0:
            self._deadline = threading.Timer(self.duration_s, self.end, ["duration reached"])
            self._deadline.daemon = True
            self._deadline.start()
        if self.live is not None:
            self._publisher = threading.Thread(target=self._publish_loop, name="live", daemon=True)
            self._publisher.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> bool:
        # The signals stay watched until the stats are written: a second SIGTERM (a
        # dead supervisor's programs get one from the kernel, then one from `pi2pi down`)
        # must not kill the program half-way through writing them.
        if exc_type is not None and self.reason is None:
            self.reason = "interrupted" if exc_type is KeyboardInterrupt else f"error: {exc}"
        self.stop.set()
        if self._deadline is not None:
            self._deadline.cancel()
        if self._publisher is not None:
            self._publisher.join(timeout=WORKER_JOIN_S)
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
        if self.live is not None:
            self.live_path.unlink(missing_ok=True)
        self._signals.__exit__()
        return False

    # ----- live snapshots ---------------------------------------------------------

    def live_record(self) -> Dict[str, Any]:
        assert self.live is not None
        return {"schema": LIVE_SCHEMA, "program": self.program, "pid": os.getpid(),
                "at": round(time.time(), 3), "running_s": round(time.time() - self.started, 3),
                **self.live()}

    def _publish_loop(self) -> None:
        last: Dict[str, Any] = {}
        last_at = 0.0
        while True:
            try:
                record = self.live_record()
                now = time.monotonic()
                if now - last_at >= LIVE_PERIOD_S or any(record.get(k) != last.get(k) for k in LIVE_EVENTS):
                    stats.write_json(self.live_path, record, durable=False)
                    last, last_at = record, now
            except Exception:  # a live snapshot is a convenience: never end the program for it
                log.exception("publishing the live snapshot failed")
                last_at = time.monotonic()
            if self.stop.wait(LIVE_POLL_S):
                return
