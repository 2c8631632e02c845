"""Helpers for the key and erasure tests: a gateway on a given database, the CLI beside it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from storage.ledger.leaf import decode_leaf
from tests.conftest import RunningCustody, start_custody


@contextmanager
def gateway(data_dir: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(data_dir, db_url)
    try:
        yield running
    finally:
        running.server.stop()  # type: ignore[attr-defined]
        asyncio.run(running.services.aclose())  # type: ignore[attr-defined]


def cli(running: RunningCustody, *args: str) -> subprocess.CompletedProcess[str]:
    """``custody ...`` in its own process, on the gateway's installation."""
    settings = running.services.settings  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def cli_ok(running: RunningCustody, *args: str) -> str:
    done = cli(running, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(running: RunningCustody, *args: str) -> str:
    """A key made by ``custody keys create``; the key is alone on the last line."""
    return cli_ok(running, "keys", "create", *args).strip().splitlines()[-1]


def call(running: RunningCustody, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method, running.base_url + path, headers={"x-goog-api-key": key}, timeout=60, **kw
    )


def leaves(running: RunningCustody) -> list[bytes]:
    ledger = running.services.ledger  # type: ignore[attr-defined]
    return [e.leaf for e in ledger.entries(0, ledger.size())]


def events_of(running: RunningCustody, type_: str) -> list[dict[str, Any]]:
    return [doc for doc in map(decode_leaf, leaves(running)) if doc["type"] == type_]


def verify_ok(running: RunningCustody) -> dict[str, Any]:
    import json

    report = json.loads(cli_ok(running, "ledger", "verify", "--json"))
    assert report["ok"], report["faults"]
    return report  # type: ignore[no-any-return]
