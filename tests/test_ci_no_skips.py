"""Under ``CI=true`` a skip of any kind fails the run (``tests/ci_no_skips.py``); elsewhere it
stays a skip. A real pytest process on a small test file with the three ways a test skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIPPING = """
import pytest

def test_imports_a_missing_module():
    pytest.importorskip("no_such_module_for_custody")

@pytest.mark.skipif(True, reason="a skipif")
def test_marked():
    pass

def test_skips_itself():
    pytest.skip("a skip in the test")

def test_passes():
    pass
"""


def _pytest(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(CI=ci, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.ci_no_skips",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_skipping.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_under_ci_every_kind_of_skip_fails(tmp_path) -> None:
    proc = _pytest(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "skipped" not in summary, summary
    assert "2 failed" in summary and "1 error" in summary, summary  # a skipif fails at setup
    for name in ("test_imports_a_missing_module", "test_marked", "test_skips_itself"):
        assert f"{name} skipped under CI=true, where nothing may skip" in proc.stdout, name


def test_outside_ci_a_skip_stays_a_skip(tmp_path) -> None:
    proc = _pytest(tmp_path, "")
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped" in proc.stdout.strip().splitlines()[-1]
