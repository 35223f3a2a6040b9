"""A lab call test that fails does not leave its call up for the next one.

Without this, one failed assertion between `fab call` and `fab hangup` left the
call running, and every later test's `fab call` failed with "a call is already
up": one defect reported as seven.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def hang_up_after_a_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "site" not in request.fixturenames:
        return
    from tests.calls.lab_call import fab
    result = fab(request.getfixturevalue("site"), "hangup")
    print(f"after the failure: fab hangup rc={result.returncode}\n{result.stdout[-2000:]}")
