"""schemathesis with many examples per operation, as each role: ``python -m bench
schemathesis_bench`` (``CUSTODY_BENCH_QUICK=1``: 20 examples; else 200). Prints what ran."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from tests.conftest import start_custody
from tests.schemathesis_run import run_schemathesis


def main() -> None:
    examples = 20 if os.environ.get("CUSTODY_BENCH_QUICK") else 200
    with tempfile.TemporaryDirectory() as tmp:
        custody = start_custody(Path(tmp) / "custody")
        try:
            for role in ("admin", "auditor", "reviewer", "editor"):
                code, output = run_schemathesis(custody, role, examples)
                found = re.search(r"(\d+) generated, (\d+) passed", output)
                print(
                    f"schemathesis as {role}, {examples} examples per operation:"
                    f" {found.group(0) if found else 'no summary'}, exit {code}",
                    flush=True,
                )
        finally:
            custody.stop()


if __name__ == "__main__":
    main()
