"""Fuzz target `selftest`: a planted bug that the fuzzer must find (not a project target).

tests/fuzz/test_fuzz.py runs it to prove that a finding fails the run, that the
runner keeps the failing input and that `--replay` reproduces it: the check
that the short fuzz runs in `make test` could fail at all. `make fuzz` leaves
it out. Allowed: nothing; the planted RuntimeError is the finding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import atheris

from tests.fuzz import common

MAX_LEN = 64


@atheris.instrument_func
def parse(data: bytes) -> None:
    if len(data) >= 6 and data[:4] == b"P2PX" and data[5] == 0x7F:
        raise RuntimeError("planted bug: a P2PX message with 0x7f in its sixth byte")


def seeds() -> Dict[str, bytes]:
    return {"near-miss": b"P2PC\x02\x00"}


def make(workdir: Path) -> Callable[[bytes], None]:
    return parse


if __name__ == "__main__":
    common.child_main(make)
