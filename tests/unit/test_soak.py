"""The soak's verdict on a program's samples (tests/soak.py), on made-up series."""
from __future__ import annotations

from tests.soak import Series, judge, slope_per_hour


def series(seconds: int, rss_kb, fds=lambda t: 12, threads=lambda t: 5) -> Series:
    s = Series()
    for t in range(seconds):
        s.add(float(t), {"rss_kb": int(rss_kb(t)), "fds": fds(t), "threads": threads(t)})
    return s


def test_the_slope_is_per_hour() -> None:
    assert abs(slope_per_hour([0, 1800, 3600], [10.0, 10.5, 11.0]) - 1.0) < 1e-9
    assert slope_per_hour([5.0], [1.0]) == 0.0


def test_a_flat_program_passes_and_a_slow_leak_does_not() -> None:
    flat = judge(series(1800, lambda t: 40_000 + (t % 7) * 50), 1800, short=False)
    assert flat["problems"] == [], flat
    leak = judge(series(1800, lambda t: 40_000 + t * 2 * 1024 / 3600), 1800, short=False)   # 2 MiB/h
    assert any("RSS slope 2.0" in p for p in leak["problems"]), leak


def test_the_short_run_bounds_growth_and_ignores_a_file_open_for_a_moment() -> None:
    blip = judge(series(120, lambda t: 40_000, fds=lambda t: 13 if t == 90 else 12), 120, short=True)
    assert blip["problems"] == [] and blip["fds"] == [12], blip
    kept = judge(series(120, lambda t: 40_000, fds=lambda t: 13 if t >= 90 else 12), 120, short=True)
    assert kept["fds"] == [12, 13] and any("open fds varied" in p for p in kept["problems"]), kept
    grows = judge(series(120, lambda t: 40_000 + t * 60), 120, short=True)   # ~2.9 MiB in the 2nd minute
    assert any("RSS grew" in p for p in grows["problems"]), grows


def test_a_program_that_ended_early_is_a_problem() -> None:
    s = series(100, lambda t: 40_000)
    s.add(100.0, None)
    assert any("ended 100 s into the call" in p for p in judge(s, 120, short=True)["problems"])
