"""The import contracts hold: routes → pipeline → stages → storage, ``storage`` imports nothing
from ``governance``, and no modules of ``governance`` or of ``storage`` import each other in a
circle.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``make test`` runs
``lint-imports`` before the suite, and this test runs the same check, so a run of the suite alone
(``.ci/run``, an editor's test button) cannot pass with a broken layer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "install the test extra: pip install -e '.[test]'"
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
