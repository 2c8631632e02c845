"""Policy engine memory under large inputs: RSS over 1,000 decisions on 2 MB inputs, 32 threads.

The real ``PolicyService`` on the shipped policies decides 1,000 turns whose input carries a 2 MB
string, submitted from a 32-thread executor as the gateway's executor submits them. RSS (VmRSS)
is read once the service is loaded, after 100 decisions (warm-up: every executor thread has
decided) and at the end. Goal: the end within 10 % of the after-warm-up figure.

Each configuration runs in a fresh process, so one's memory does not hide another's: the engine as
shipped (large inputs on its one large-input thread); the same with glibc limited to two arenas
(``MALLOC_ARENA_MAX=2``), which takes out what the executor threads' own Python work keeps; and the
engine told to evaluate every input on the caller's thread, as it did before (with its
interpreters bounded, which alone does not help).

The 2 MB rides in a label value rather than the prompt so that the prompt classifier, whose cost is
bounded separately by input caps before evaluation, does not stretch the run: rego-cpp receives
the same 2 MB string either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from governance.policy.decision import ImageFacts, RequestFacts
from governance.policy.engine_regopy import INLINE_MAX_BYTES, MAX_INPUT_BYTES, RegopyEngine
from governance.policy.service import PolicyService

POLICIES = Path(__file__).resolve().parents[1] / "policies"
DECISIONS = 1_000
WARM_UP = 100
EXECUTOR_THREADS = 32
INPUT_BYTES = 2_000_000


def rss_mib() -> float:
    """This process's resident set size (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status (this benchmark needs Linux)")


def large_facts(i: int, note: str) -> RequestFacts:
    """An edit turn of actor ``i % 50`` whose policy input carries ``note``."""
    image = ImageFacts("parent", "image/png", 4_200_000, 1024, 1024, "ab" * 32, False)
    return RequestFacts(
        "bench", f"editor{i % 50}", ("editor",), "gemini-2.5-flash-image", "make the sofa teal",
        (image,), "s1", 3, (), {"asset": "draft", "note": note},
    )  # fmt: skip


def run(
    inline: bool, decisions: int = DECISIONS, callers: int = EXECUTOR_THREADS
) -> dict[str, Any]:
    """Decide ``decisions`` large turns from ``callers`` threads; RSS at start, warm-up, end.

    With ``inline`` every input is evaluated on the caller's thread, large ones included.
    """
    inline_max = MAX_INPUT_BYTES if inline else INLINE_MAX_BYTES
    service = PolicyService(
        POLICIES, engine_factory=lambda bundle: RegopyEngine(bundle, inline_max_bytes=inline_max)
    )
    note = ("make the sofa teal, flatten the fabric " * (INPUT_BYTES // 39 + 1))[:INPUT_BYTES]
    facts = [large_facts(i, note) for i in range(50)]  # built before the first reading
    outcomes: Counter[str] = Counter()
    start = rss_mib()
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=callers) as executor:

        def decide(i: int) -> str:
            decision = service.decide_request(facts[i % len(facts)])
            return f"{decision.outcome}/{decision.engine}"

        outcomes.update(executor.map(decide, range(WARM_UP)))
        warm = rss_mib()
        peak = warm
        for first in range(WARM_UP, decisions, 100):
            outcomes.update(executor.map(decide, range(first, min(decisions, first + 100))))
            peak = max(peak, rss_mib())
        end = rss_mib()
    return {
        "start": start,
        "warm": warm,
        "peak": peak,
        "end": end,
        "seconds": time.perf_counter() - began,
        "outcomes": dict(outcomes),
    }


def _in_fresh_process(inline: bool, arena_max: str = "") -> dict[str, Any]:
    env = dict(os.environ)
    if arena_max:
        env["MALLOC_ARENA_MAX"] = arena_max
    command = [sys.executable, "-m", "bench.policy_memory_bench", "--one", str(int(inline))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    print(
        f"policy engine memory: {DECISIONS} decide_request calls on {INPUT_BYTES / 1e6:.0f} MB"
        f" inputs from {EXECUTOR_THREADS} threads, RSS in MiB (fresh process each)"
    )
    rows = [
        ("large inputs on the engine's thread (shipped)", _in_fresh_process(False)),
        ("the same, MALLOC_ARENA_MAX=2", _in_fresh_process(False, "2")),
        ("every input on the caller's thread (before)", _in_fresh_process(True)),
    ]
    for label, r in rows:
        growth = (r["end"] - r["warm"]) / r["warm"] * 100
        verdict = "flat" if growth <= 10 else "GROWS"
        print(
            f"  {label:46} start {r['start']:6.0f}  after {WARM_UP} {r['warm']:6.0f}"
            f"  end {r['end']:6.0f}  peak {r['peak']:6.0f}  end vs warm-up {growth:+5.1f} %"
            f" ({verdict})  {r['seconds']:.1f} s  {r['outcomes']}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run(inline=sys.argv[2] == "1")))
    else:
        main()
