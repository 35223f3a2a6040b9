"""The lab call tests' shared set-up.

One lab for the package. Bringing the lab up and provisioning it from scratch
costs about a minute; each module used to do both. Now the modules hand one
provisioned lab to one another: each module's `site` fixture asks
`shared_site.ready(transport)`, which first checks that the lab is as the
module before left it on purpose (the handover, `handover_problems`), then runs
site.yml only if the transport it needs is not the one provisioned. Anything
else a module left changed (a call up, natpi's address moved, a link down, an
impairment, the tunnel unit stopped) is a defect of that module: it is named on
stdout and the lab is rebuilt and provisioned from scratch, as before, so the
next module still starts from a known state. A module that changes the lab on
purpose puts it back itself (test_call_faults restores natpi's address).

A lab call test that fails does not leave its call up for the next one.
Without this, one failed assertion between `fab call` and `fab hangup` left the
call running, and every later test's `fab call` failed with "a call is already
up": one defect reported as seven.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.calls.handover import SharedSite
from tests.lab.fixtures import running_lab
from tests.lab.lab import Lab


# The modules that share the lab, in the order that needs the fewest site.yml runs: each
# starts on the direct transport, and the last tests of test_call_faults and test_call_lab
# switch it to tunnel, so the one that leaves it direct (test_panel_lab) goes first and the
# next module finds it as it needs it. The others keep their order, after these.
SHARED_LAB_ORDER = ("test_panel_lab.py", "test_call_faults.py", "test_call_lab.py")


def pytest_collection_modifyitems(items: list) -> None:
    here = Path(__file__).parent
    places = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == here]
    ours = sorted((items[i] for i in places), key=lambda item: (
        SHARED_LAB_ORDER.index(Path(str(item.fspath)).name) if Path(str(item.fspath)).name in SHARED_LAB_ORDER
        else len(SHARED_LAB_ORDER)))
    for place, item in zip(places, ours):
        items[place] = item


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


@pytest.fixture(scope="package")
def lab() -> Iterator[Lab]:
    """The package's one lab (tests/lab/fixtures.py's `lab` is one per module)."""
    yield from running_lab()


@pytest.fixture(scope="package")
def shared_site(lab: Lab) -> SharedSite:
    return SharedSite(lab)
