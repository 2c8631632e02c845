"""``custody serve``'s malloc settings: applied through glibc's ``mallopt``, refused when invalid.

The gateway caps glibc's arenas and fixes the mmap threshold at start-up (see
docs/performance.md, "Gateway, end to end"); each call must succeed on this glibc, and a bad value
must stop the command with a sentence, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_tune_malloc_is_accepted_by_glibc_for_each_knob() -> None:
    done = _python(
        "from governance.cli import tune_malloc;"
        "print(tune_malloc(2, 1 << 20), tune_malloc(2, 0), tune_malloc(0, 1 << 20),"
        " tune_malloc(0, 0))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "True"]


def test_serve_refuses_a_negative_arena_count_before_starting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(
        HOME=str(tmp_path / "home"),
        PYTHONPATH=str(REPO),
        CUSTODY_DATA_DIR=str(tmp_path / "data"),
        CUSTODY_MALLOC_ARENA_MAX="-1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "governance.cli", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert "malloc_arena_max" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before any state was created


def test_the_arenas_are_trimmed_in_the_background_and_give_memory_back() -> None:
    """``trim_malloc_every`` runs ``malloc_trim`` in a daemon thread: freed 100 KB buffers that
    the arena keeps (each is followed by a live one, so none is the heap's top) leave the
    resident set."""
    done = _python(
        "import time\n"
        "from governance.cli import trim_malloc_every\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'): return int(line.split()[1]) // 1024\n"
        "assert trim_malloc_every(0) is None\n"
        "held, kept = [], []\n"
        "for _ in range(640):\n"
        "    held.append(b'x' * (100 << 10))\n"
        "    kept.append(b'y' * 4096)\n"
        "del held\n"
        "before = rss()\n"
        "thread = trim_malloc_every(0.05)\n"
        "deadline = time.monotonic() + 30\n"
        "while rss() > before - 24 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(thread.daemon, thread.is_alive(), before - rss())\n"
    )
    assert done.returncode == 0, done.stderr
    daemon, alive, freed = done.stdout.split()
    assert (daemon, alive) == ("True", "True")
    assert int(freed) >= 24
