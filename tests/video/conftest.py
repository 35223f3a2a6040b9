"""A failed test must not leave camera or viewer processes behind."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.video.helpers import Program


@pytest.fixture(autouse=True)
def no_leftover_programs() -> Iterator[None]:
    yield
    while Program.started:
        program = Program.started.pop()
        if program.proc.poll() is None:
            program.proc.kill()
            program.proc.wait()
