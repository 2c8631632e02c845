"""``custody serve`` as a real process in tests: its environment and waiting for it to serve."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This shell's environment without any ``CUSTODY_*`` or XDG data setting, with a home and
    a data directory under ``tmp_path`` and the repository importable; then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(
        HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), CUSTODY_DATA_DIR=str(tmp_path / "data")
    )
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    env.update(extra)
    return env


def wait_healthy(base_url: str, proc: subprocess.Popen[str]) -> None:
    """Until ``base_url``/healthz answers 200; fails if ``proc`` exits first or after 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "custody serve exited during start-up"
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("custody serve did not become healthy")
