"""The stats schema, the atomic write, and stats written however a run ends."""
import json
import os
import signal
import threading
import time

import pytest

from pi2pi import stats
from pi2pi.lifecycle import ProgramRun


def test_percentiles_nearest_rank():
    assert stats.percentiles(list(range(1, 101))) == {"p50": 50, "p95": 95, "p99": 99}
    assert stats.percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_samples_stay_bounded_and_representative():
    samples = stats.Samples(limit=1000)
    for i in range(100_000):
        samples.add(float(i % 100))
    assert len(samples.values) == 1000 and samples.seen == 100_000
    assert 40 <= samples.summary()["p50"] <= 60


def test_samples_take_their_memory_up_front_not_while_filling():
    # A soak reads memory that creeps up for 22 minutes (20 000 frames at 15 fps) as a leak.
    import tracemalloc
    tracemalloc.start()
    try:
        samples = stats.Samples(limit=20_000)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            samples.add(i * 0.5)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 10_000, f"filling the reservoir allocated {grown} bytes"
    assert samples.summary()["p50"] == 4999.5 and len(samples.values) == 20_000


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    record = stats.build("camera", 100.0, 160.5, "duration reached", {"frames": 900})
    path = stats.write(tmp_path, record)
    assert path == tmp_path / "camera.json"
    assert json.loads(path.read_text()) == record
    assert record["schema"] == stats.SCHEMA and record["duration_s"] == 60.5
    assert sorted(os.listdir(tmp_path)) == ["camera.json"]
    assert stats.read_dir(tmp_path) == [record]


def test_reserved_fields_are_refused():
    with pytest.raises(ValueError):
        stats.build("camera", 0, 1, "x", {"reason": "mine"})


def test_stats_written_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ProgramRun("talk", tmp_path, 0, lambda: {"packets": 3}):
            raise RuntimeError("device vanished")
    record = json.loads((tmp_path / "talk.json").read_text())
    assert record["reason"] == "error: device vanished" and record["packets"] == 3


def test_sigterm_ends_the_run_and_is_the_reason(tmp_path):
    with ProgramRun("listen", tmp_path, 0, lambda: {}) as run:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert run.stop.wait(5)
    assert json.loads((tmp_path / "listen.json").read_text())["reason"] == "signal SIGTERM"


def test_duration_ends_the_run(tmp_path):
    with ProgramRun("camera", tmp_path, 0.05, lambda: {}) as run:
        assert run.stop.wait(5)   # nothing polls a clock: the deadline sets the stop event
    assert json.loads((tmp_path / "camera.json").read_text())["reason"] == "duration reached"


def test_a_dying_worker_thread_ends_the_run_with_its_reason(tmp_path):
    def sender() -> None:
        raise ConnectionError("the socket went away")

    with ProgramRun("camera", tmp_path, 0, lambda: {}) as run:
        run.worker(sender, "sender")
        assert run.stop.wait(5), "a dead worker left the program running"
    reason = json.loads((tmp_path / "camera.json").read_text())["reason"]
    assert reason == "error: the sender thread died: ConnectionError('the socket went away')"


def test_live_snapshots_while_running_then_only_the_stats(tmp_path):
    frames = [0]
    with ProgramRun("viewer", tmp_path, 0, lambda: {"frames": frames[0]},
                    live=lambda: {"state": "listening", "peer": None, "flowing": frames[0] > 0,
                                  "frames": frames[0]}) as run:
        live = tmp_path / "viewer.live.json"
        deadline = time.monotonic() + 5
        while not live.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(live.read_text())["flowing"] is False
        frames[0] = 1   # the first frame
        while json.loads(live.read_text())["frames"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        record = json.loads(live.read_text())
        assert record["schema"] == "pi2pi.live/1" and record["flowing"] is True
        run.end("peer gone")
    assert not live.exists() and json.loads((tmp_path / "viewer.json").read_text())["frames"] == 1


def test_stream_rates_count_only_the_time_the_stream_flowed():
    # 31 frames from t=10 to t=13: 30 intervals in 3 s; waiting before t=10 does not count.
    rates = stats.stream_rates(31, 3000 * 31, 10.0, 13.0, started_at=0.0)
    assert rates == {"fps": 10.0, "kbps": round(3000 * 31 * 8 / 1000 / 3, 1)}
