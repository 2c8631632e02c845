"""``custody serve``'s malloc settings: applied through glibc's ``mallopt``, refused when invalid.

The gateway caps glibc's arenas and fixes the mmap threshold at start-up (see
docs/performance.md, "Gateway, end to end"); each call must succeed on this glibc, and a bad value
must stop the command with a sentence, not a traceback.
"""

from __future__ import annotations

import os
import signal
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


def test_the_huge_page_tunable_is_added_to_what_glibc_tunables_holds() -> None:
    from governance.cli import with_huge_pages

    assert with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    }
    # An operator's own choice (0 turns it off) is theirs: no second tunable, no re-exec.
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


def _huge_pages_mode() -> str:
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    return text[text.index("[") + 1 : text.index("]")]


def test_with_the_tunable_glibc_backs_a_large_buffer_with_huge_pages() -> None:
    # The reason for the re-exec, on this machine: an 8 MB buffer (a mapping of its own above
    # the 1 MiB threshold custody serve sets) is faulted in as 2 MiB pages.
    assert _huge_pages_mode() in ("always", "madvise"), "THP is off: the tunable does nothing"
    code = (
        "from governance.cli import tune_malloc\n"
        "assert tune_malloc(2, 1 << 20)\n"
        "buf = bytearray(8 << 20)\n"
        "buf[::4096] = b'x' * len(buf[::4096])\n"
        "for line in open('/proc/self/smaps_rollup'):\n"
        "    if line.startswith('AnonHugePages:'): print(int(line.split()[1]))\n"
    )
    sizes = {}
    for tunables in ("", "glibc.malloc.hugetlb=1"):
        env = {**os.environ, "GLIBC_TUNABLES": tunables}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
        )
        assert done.returncode == 0, done.stderr
        sizes[tunables] = int(done.stdout)
    assert sizes[""] == 0
    assert sizes["glibc.malloc.hugetlb=1"] >= 2048  # kB: at least one 2 MiB page


def _serving_environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Start custody serve, wait for /healthz: the environment of the started process (its
    pid) as /proc shows it, which is the one its last exec was given."""
    from governance.upstream.embedded import free_port
    from tests.serve_helpers import serve_env, wait_healthy

    env = serve_env(tmp_path, **extra)
    env.pop("GLIBC_TUNABLES", None)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
        return dict(v.split("=", 1) for v in raw.decode().split("\0") if "=" in v)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_restarts_itself_once_with_the_tunable_in_the_same_process(tmp_path: Path) -> None:
    # The started pid itself runs with the tunable: an exec, not a child, so a supervisor or a
    # pid file sees one process.
    assert _serving_environ(tmp_path)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_serve_without_huge_pages_runs_as_started(tmp_path: Path) -> None:
    environ = _serving_environ(tmp_path / "off", CUSTODY_MALLOC_HUGE_PAGES="false")
    assert "GLIBC_TUNABLES" not in environ
