"""Under ``CI=true`` nothing may skip: a skip, however it was raised, is reported as a failure.

The fixtures already fail instead of skipping under CI (``conftest._skip_or_fail``); this plugin
also catches what they do not see — ``pytest.importorskip`` of a test dependency that is not
installed, a ``pytest.skip`` written in a test, a ``skipif`` — so "zero skips" is a property of
the run, not a convention. Loaded by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped under CI=true, where nothing may skip: {reason}"
