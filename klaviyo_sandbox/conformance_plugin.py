"""Pytest plugin: every JSON body a sandbox serves during the test session is validated against the spec.

Registered for the whole suite from ``tests/conftest.py`` (``pytest_plugins``).  It switches
validation on for every ``Sandbox`` (``KLAVIYO_SANDBOX_VALIDATE=1``, inherited by sandboxes run
in subprocesses too, which log drift), and after each test fails it when any response drifted
from the spec, naming the operation, status and JSON path.  A test that provokes drift on
purpose drains :data:`klaviyo_sandbox.conformance.DRIFT` itself.  ``KLAVIYO_SANDBOX_VALIDATE=0``
switches validation off for a run (e.g. to time the connector without it).
"""

from __future__ import annotations

import os

import pytest

from klaviyo_sandbox.conformance import DRIFT, ENV_SWITCH


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(ENV_SWITCH, "1")


@pytest.fixture(autouse=True)
def sandbox_conformance():
    """Fail the test when a sandbox response drifted from its spec schema (checked at teardown)."""
    yield
    drift = DRIFT.drain()
    if drift:
        shown = "\n  ".join(drift[:10])
        more = f"\n  ... and {len(drift) - 10} more" if len(drift) > 10 else ""
        pytest.fail(f"sandbox responses drifted from the Klaviyo spec ({len(drift)}):\n  {shown}{more}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # drift recorded outside any test (e.g. in a module-scoped fixture's teardown)
    drift = DRIFT.drain()
    if drift:
        print(f"\nsandbox responses drifted from the Klaviyo spec outside tests ({len(drift)}):")
        for message in drift[:10]:
            print("  " + message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    # drift excused by conformance.KNOWN_DRIFT stays visible until it is fixed
    from klaviyo_sandbox.conformance import DRIFT

    if DRIFT.tolerated:
        terminalreporter.write_sep("-", "known sandbox drift excused (conformance.KNOWN_DRIFT)")
        for reason, count in sorted(DRIFT.tolerated.items()):
            terminalreporter.write_line(f"{count:6d} x {reason}")
