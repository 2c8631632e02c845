"""schemathesis (the CLI, from PyPI) against a live Custody's native OpenAPI with a real key.

Shared by ``tests/test_schemathesis.py`` (a few examples per operation) and
``bench/schemathesis_bench.py`` (many). The only check is ``not_a_server_error``: whatever
schemathesis generates, Custody answers without a 5xx.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningCustody

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(custody: RunningCustody, role: str, max_examples: int) -> tuple[int, str]:
    """Exit status and output of one run with ``role``'s key as Bearer token."""
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            custody.base_url + "/api/v1/openapi.json",
            "-H",
            f"Authorization: Bearer {custody.keys[role]}",
            "-H",
            f"x-goog-api-key: {custody.keys[role]}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(max_examples),
            "--seed",
            "20",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr
