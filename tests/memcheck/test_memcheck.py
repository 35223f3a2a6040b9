"""valgrind memcheck of camera -> viewer and talk -> listen (tests/memcheck/run.py), in the host tests.

About two minutes on the 2-core test machine: a planted TurboJPEG leak that the
check must catch, then each call with both ends under valgrind at once. The
report (every definitely and indirectly lost record, per program and library)
is the assertion message when it fails and printed with -s.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from tests.memcheck import run


def test_calls_leak_nothing_in_the_native_libraries_and_the_check_sees_a_planted_leak(tmp_path: Path) -> None:
    lines: List[str] = []
    ok = run.run_all(tmp_path, frames=5, seconds=2.0, report=lines.append)
    print("\n".join(lines))
    assert ok, "\n".join(lines)
