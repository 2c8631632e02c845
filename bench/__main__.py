"""Run every benchmark in turn: ``python -m bench [--quick] [name ...]``.

``--quick`` sets ``CUSTODY_BENCH_QUICK=1``: the gateway benchmarks then run a short version.
"""

from __future__ import annotations

import importlib
import os
import sys

BENCHES = (
    "gateway_bench",
    "gateway_memory_bench",
    "ledger_bench",
    "c2pa_bench",
    "policy_bench",
    "policy_memory_bench",
    "fingerprint_bench",
    "query_bench",
    "evidence_bench",
    "replicas_bench",
    "slowloris_bench",
    "schemathesis_bench",
)


def main(argv: list[str]) -> int:
    if "--quick" in argv:
        os.environ["CUSTODY_BENCH_QUICK"] = "1"
    names = [a for a in argv if a != "--quick"] or list(BENCHES)
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
