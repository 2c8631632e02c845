"""rego-cpp frees what it allocates, even when another extension loaded libstdc++ first.

numpy (imported by the fingerprints) loads libstdc++ before regopy; rego-cpp's own operator
new/delete (snmalloc) and libstdc++'s (glibc malloc) then each freed the other's blocks, and
glibc kept ~48 KiB of every decision for good (docs/performance.md, "Gateway, end to end").
A fresh interpreter, numpy first as in the gateway, 300 decisions: glibc's heap in use (mallinfo2)
must not grow by more than a few MiB (it grew ~14 MiB before the fix). A bound on memory, not a
time.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import ctypes, gc
import numpy  # loads libstdc++ first, as the gateway's imports do
from governance.policy.ratelimit import RateLimiter
from governance.policy.service import PolicyService
from governance.settings import Settings
from tests.test_policy_service import facts

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
service = PolicyService.from_settings(Settings(data_dir=DATA), RateLimiter())

def turns(n):
    for i in range(n):
        decision = service.decide_request(facts("make it teal", actor=f"a{i % 16}"))
        service.settle_reservation(decision.decision_id)

def in_use():
    gc.collect()
    return libc.mallinfo2().uordblks

turns(50)  # interpreters and caches warm
before = in_use()
turns(300)
print(in_use() - before)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc only"
)
def test_decisions_leave_nothing_in_glibcs_heap_with_numpy_loaded_first(tmp_path: Path) -> None:
    script = SCRIPT.replace("DATA", repr(str(tmp_path / "data")))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    grown = int(done.stdout.strip().splitlines()[-1])
    assert grown < 4 * 2**20, f"300 decisions left {grown / 2**20:.1f} MiB in glibc's heap"
