"""Run every benchmark in turn: ``python -m bench [name ...]``."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("gateway_bench", "ledger_bench", "c2pa_bench", "policy_bench", "policy_memory_bench")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
