"""Signals reach a program's loops without a handler that can deadlock it.

A Python signal handler that sets a threading.Event can run while the main thread
holds that Event's lock (inside Event.wait) and then waits for that lock for
ever: CI saw a camera that never ended after SIGTERM. Each case runs in a
subprocess, so that a deadlock is a timeout here, not a hung test run.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

TIMEOUT_S = 5   # each case ends in under 3 s unless it is deadlocked
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {runtime!r})
    from pi2pi.lifecycle import SignalWatch

    woken = threading.Event()
    seen = [0]

    def note(signum):
        seen[0] += 1
        woken.set()

    how, load = sys.argv[1], sys.argv[2]
    if how == "handler":     # the hazard: the Event set inside the Python handler
        signal.signal(signal.SIGUSR1, lambda s, f: note(s))
    else:
        SignalWatch([signal.SIGUSR1], note).__enter__()

    if load == "held":
        # The signal lands exactly where Event.wait holds the Event's own lock.
        with woken._cond:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)
        assert woken.wait(5), "the signal never arrived"
        print(1, seen[0])
    else:
        # Signals as fast as they come while the main thread waits in a tight loop.
        def pound():
            while True:
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.00005)
        threading.Thread(target=pound, daemon=True).start()
        loops = 0
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            woken.wait(0.0001)
            woken.clear()
            loops += 1
        print(loops, seen[0])
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
""")


def run(tmp_path: Path, how: str, load: str) -> subprocess.CompletedProcess:
    script = tmp_path / "signals.py"
    script.write_text(SCRIPT.format(runtime=str(RUNTIME)))
    try:
        return subprocess.run([sys.executable, str(script), how, load], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, -1, "", f"deadlocked: no exit in {TIMEOUT_S} s")


def test_a_signal_while_the_main_thread_holds_the_event_lock_still_sets_it(tmp_path):
    result = run(tmp_path, "watch", "held")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "1"]


def test_control_the_same_signal_deadlocks_a_handler_that_sets_the_event(tmp_path):
    result = run(tmp_path, "handler", "held")
    assert result.returncode == -1 and "deadlocked" in result.stderr, (result.returncode, result.stderr[-2000:])


def test_signals_as_fast_as_they_come_never_stop_a_waiting_main_thread(tmp_path):
    result = run(tmp_path, "watch", "pound")
    assert result.returncode == 0, result.stderr[-2000:]
    loops, seen = map(int, result.stdout.split())
    assert loops > 1000 and seen > 100, result.stdout   # it kept waiting, and the signals did arrive


SECOND_SIGNAL = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {runtime!r})
    from pi2pi.lifecycle import ProgramRun

    stats_dir = Path(sys.argv[1])
    def snapshot():
        # Collecting the stats takes a while: the second SIGTERM lands in the middle of it.
        (stats_dir / "collecting").touch()
        time.sleep(0.5)
        return {{"frames": 7}}
    with ProgramRun("talk", stats_dir, 0, snapshot) as run:
        print("running", flush=True)
        run.stop.wait(10)
""")


def test_a_second_sigterm_while_the_stats_are_written_does_not_lose_them(tmp_path):
    """A dead supervisor's programs get SIGTERM from the kernel, then another from `pi2pi down`
    (clear_dead) while they are still writing their stats: those must still be written."""
    import json
    import os
    import signal
    import time
    script = tmp_path / "second.py"
    script.write_text(SECOND_SIGNAL.format(runtime=str(RUNTIME)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT_S
        while not (tmp_path / "collecting").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the stats were never collected"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)   # the second one, half-way through
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    record = json.loads((tmp_path / "talk.json").read_text())
    assert record["reason"] == "signal SIGTERM" and record["frames"] == 7, record
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
